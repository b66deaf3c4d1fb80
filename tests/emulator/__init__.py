"""Tests of the loopback exchange emulator (real sockets, no mocks)."""
