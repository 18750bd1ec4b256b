"""A fake Gemini Live upstream for the WebSocket benchmark: Tornado's
WebSocketHandler at the Live API's path. `setup` is answered with
`setupComplete`; every other message comes back as it is, as a binary frame
(Google's frames are binary), so a client can time a frame's round trip.

Run: python bench/fake_live.py --port 9200
"""

import argparse
import asyncio

import tornado.web
import tornado.websocket

PATH = r"/ws/google\.ai\.generativelanguage\.v1beta\.GenerativeService\.BidiGenerateContent"


class Live(tornado.websocket.WebSocketHandler):
    async def on_message(self, message):
        if isinstance(message, str) and message.startswith('{"setup"'):
            message = '{"setupComplete": {}}'
        try:
            await self.write_message(message.encode() if isinstance(message, str) else message, binary=True)
        except tornado.websocket.WebSocketClosedError:
            pass


async def main(port):
    app = tornado.web.Application([(PATH, Live), (r"/healthz", Health)])
    app.listen(port, "127.0.0.1", backlog=4096)
    await asyncio.Event().wait()


class Health(tornado.web.RequestHandler):
    def get(self):
        self.finish("ok")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    try:
        import uvloop

        uvloop.run(main(parser.parse_args().port))
    except ImportError:
        asyncio.run(main(parser.parse_args().port))
