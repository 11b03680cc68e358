"""ssh's ProxyCommand for the test's sshd (tests/test_onprem.py): relays stdin/stdout to and
from 127.0.0.1:PORT, with the standard library only, until the server closes.

Usage: python ssh_relay.py PORT
Prints: what the server sends (bytes, unchanged); stdin goes to the server.
"""

import os
import socket
import sys
import threading


def main() -> None:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))

    def up():
        while data := os.read(0, 65536):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)

    threading.Thread(target=up, daemon=True).start()
    while data := s.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    main()
