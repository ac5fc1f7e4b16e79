"""Live migration of a VM between two hosts: the pre-copy policy, the sender and receiver of
the suspend image in Xen's stream format, and xenopsd's handshake, on the host core."""
