"""SR storage: directories of VHD files, each ``<uuid>.vhd`` a VDI recorded in the state."""
