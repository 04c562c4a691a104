"""Running things for real on this machine: the one QEMU + swtpm launcher (kernel boot proof and
`obelisk boot`), node provisioning, and the demo walkthrough."""
