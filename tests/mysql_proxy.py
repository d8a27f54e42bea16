#!/usr/bin/env python3
"""A TCP relay between PHP and MariaDB on 127.0.0.1, for what networks do to idle connections.

    mysql_proxy.py UPSTREAM_PORT [DELAY_SECONDS [hold]]

Prints the port it listens on, then relays each connection to 127.0.0.1:UPSTREAM_PORT, holding
every chunk DELAY_SECONDS (0 by default) before passing it on, as a distant server would.
With "hold", it listens with the smallest backlog and accepts nothing until SIGHUP, as a busy
server: once one connection waits, the kernel drops new SYNs and clients retry a second later.
Signals, each answered with a line once it has taken effect (the test waits for it: on a busy
machine the handler runs late, and a client let go before would race it):
- SIGUSR1 closes every connection it relays, both ends, as a proxy or a NAT that forgot an idle
  connection does; new connections are relayed as before ("dropped");
- SIGUSR2 freezes it for good: connections stay open and new ones are accepted, but nothing
  passes any more, as with a hung server or a network that drops packets without a word
  ("frozen");
- SIGHUP, with "hold", starts accepting ("accepting").
Stops on SIGTERM.
"""

import signal
import socket
import sys
import threading
import time

relayed = set()
relayed_lock = threading.Lock()
frozen = threading.Event()


def wait_while_frozen():
    while frozen.is_set():
        time.sleep(0.05)


def pump(source, sink, delay):
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            if delay:
                time.sleep(delay)
            wait_while_frozen()
            sink.sendall(chunk)
    except OSError:
        pass
    for end in (source, sink):
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay(client, upstream_port, delay):
    wait_while_frozen()
    try:
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
    except OSError:
        client.close()
        return
    with relayed_lock:
        relayed.update((client, upstream))
    both = [threading.Thread(target=pump, args=pair, daemon=True)
            for pair in ((client, upstream, delay), (upstream, client, delay))]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    with relayed_lock:
        relayed.difference_update((client, upstream))
    client.close()
    upstream.close()


def drop_all():
    with relayed_lock:
        ends = list(relayed)
    for end in ends:
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def answering(act, word):
    """A signal handler that does `act`, then says `word` on its own line."""
    def handler(_signum, _frame):
        act()
        print(word, flush=True)
    return handler


def main():
    upstream_port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    hold = sys.argv[3:4] == ["hold"]
    accepting = threading.Event()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0 if hold else 64)
    signal.signal(signal.SIGUSR1, answering(drop_all, "dropped"))
    signal.signal(signal.SIGUSR2, answering(frozen.set, "frozen"))
    signal.signal(signal.SIGHUP, answering(accepting.set, "accepting"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(listener.getsockname()[1], flush=True)
    if hold:
        accepting.wait()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=relay, args=(client, upstream_port, delay), daemon=True).start()


if __name__ == "__main__":
    main()
