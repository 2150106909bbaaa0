"""Run the fake upstream alone: ``python -m fakeupstream [--port N]``; prints its URL."""

import argparse
import sys

import tornado.ioloop

from fakeupstream.app import listen


def main():
    p = argparse.ArgumentParser(description="demo upstream answering like PandoraNext backend-api")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    url = listen(args.port, args.host)
    print("fake upstream listening on %s" % url, flush=True)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    sys.exit(main())
