"""The floor under Kylon: the same stack (Tornado + CurlAsyncHTTPClient) relaying
a POST to the upstream and its answer back chunk by chunk, with nothing else
(no key, no metering, no usage record). The distance between this column and
Kylon's is what Kylon's own work costs; the distance between this and nginx is
what the stack costs. It runs on the same event loop as Kylon (uvloop when
installed, like Kylon's default).

Run: python bench/floor_relay.py --port 9200 --upstream http://127.0.0.1:9100
"""

import argparse
import asyncio

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest


class Relay(tornado.web.RequestHandler):
    async def post(self, path):
        def chunk(data):
            if not self.request.connection.stream.closed():
                self.write(data)
                self.flush()

        def header_line(line):
            # The status line; other headers are left out (the client gets
            # Tornado's own), except the content type that makes a stream a stream.
            if line.lower().startswith("content-type:"):
                self.set_header("Content-Type", line.split(":", 1)[1].strip())

        request = HTTPRequest(
            self.settings["upstream"] + path,
            method="POST",
            body=self.request.body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench-upstream"},
            streaming_callback=chunk,
            header_callback=header_line,
            request_timeout=3600,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        self.set_status(response.code if response.code != 599 else 502)
        if not self._finished:
            self.finish()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    args = parser.parse_args()
    AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=2500)
    app = tornado.web.Application([(r"(/.*)", Relay)], upstream=args.upstream)
    app.listen(args.port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
