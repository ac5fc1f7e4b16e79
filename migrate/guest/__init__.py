"""Guests: the hypervisor interface the host drives its virtual machines through, and its
backend on Linux processes (RAM in a memfd, the kernel's dirty log, SIGSTOP as pause)."""
