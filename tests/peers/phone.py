#!/usr/bin/env python3
"""A softphone for the tests: baresip 4 (libre 4.x, through the
baresip-python bindings from PyPI), driven line by line.

Debian 12's baresip 1.0 has no attended transfer; this one does
(baresip's own REFER with Replaces, `call_replace_transfer`). The test
starts it, writes commands on stdin and reads events on stdout:

  commands: dial URI | atransfer | hangup N | hold N | resume N | quit
  events:   REGISTERED | INCOMING N | ESTABLISHED N | CLOSED N REASON
            | TRANSFERRED | FAILED what: why

Calls are numbered 1, 2, ... in the order they appear. Every call speaks
a sine of --tone Hz; what each call received is written, when it closes,
to DIR/call-N.wav (16-bit mono at the codec's rate), so the test can look
for the other parties' tones in it.
"""

import argparse
import asyncio
import math
import struct
import sys
import wave

from baresip import Account, Config, Event
from baresip.call import Call, CallState
from baresip.runtime import Runtime
from baresip.ua import UserAgent

FRAME_MS = 20


def say(*words):
    print(*words, flush=True)


class Phone:
    def __init__(self, args):
        self.args = args
        self.calls: dict[int, Call] = {}
        self.received: dict[int, bytearray] = {}
        self.rates: dict[int, int] = {}
        self.tasks: dict[int, asyncio.Task] = {}

    def number(self, call: Call) -> int:
        for n, c in self.calls.items():
            if c is call:
                return n
        n = len(self.calls) + 1
        self.calls[n] = call
        self.received[n] = bytearray()
        call.on(lambda ev, n=n: self.on_event(n, ev))
        return n

    def on_event(self, n: int, ev):
        if ev.event is Event.CALL_ESTABLISHED:
            say("ESTABLISHED", n)
            if n not in self.tasks:
                self.tasks[n] = asyncio.get_running_loop().create_task(self.media(n))
        elif ev.event is Event.CALL_CLOSED:
            self.save(n)
            reason = (ev.text or "closed").replace(" ", "_")
            say("CLOSED", n, reason)

    async def media(self, n: int):
        """Speak the tone and keep what arrives, paced by the stack's own
        transmit clock: keep about three frames queued."""
        call = self.calls[n]
        phase = 0.0
        while call.state is CallState.ESTABLISHED:
            try:
                info = call.audio.info()
                rate, ch = info.tx_sample_rate or 8000, info.tx_channels or 1
                self.rates[n] = info.rx_sample_rate or rate
                frame = rate * FRAME_MS // 1000
                while call.audio.info().tx_buffered < 3 * frame * ch * 2:
                    samples = []
                    for _ in range(frame):
                        v = int(8000 * math.sin(phase))
                        samples.extend([v] * ch)
                        phase += 2 * math.pi * self.args.tone / rate
                    phase %= 2 * math.pi
                    call.audio.write(struct.pack(f"<{len(samples)}h", *samples))
                while True:
                    chunk = call.audio.read(65536)
                    if not chunk:
                        break
                    self.received[n] += chunk
            except Exception:
                # No media yet, or renegotiated (hold): try again next frame.
                pass
            await asyncio.sleep(FRAME_MS / 1000 / 2)

    def save(self, n: int):
        with wave.open(f"{self.args.dir}/call-{n}.wav", "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rates.get(n, 8000))
            w.writeframes(bytes(self.received[n]))

    async def run(self):
        a = self.args
        runtime = Runtime(native_log_level="warning")
        await runtime.start(
            Config(
                net_interface="127.0.0.1",
                audio_driver="aumem",
                max_concurrent_calls=4,
                extra_config_text=f"sip_listen 127.0.0.1:{a.port}\n",
            )
        )
        account = Account(
            user=a.user,
            domain=a.server,
            password=a.password,
            audio_codecs=("pcma", "pcmu"),
            reg_interval=600,
        )
        ua = await UserAgent.create(runtime, account)
        loop = asyncio.get_running_loop()

        def incoming(call: Call):
            n = self.number(call)
            say("INCOMING", n)
            loop.create_task(self.answer(n))

        ua.on_incoming(incoming)
        await ua.register()
        say("REGISTERED")
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            verb, _, rest = line.partition(" ")
            try:
                if verb == "quit":
                    break
                elif verb == "dial":
                    call = await ua.dial(rest)
                    self.number(call)
                elif verb == "atransfer":
                    # The first call goes to the second's peer.
                    await self.calls[1].attended_transfer(self.calls[2], timeout=15)
                    say("TRANSFERRED")
                elif verb in ("hangup", "hold", "resume"):
                    await getattr(self.calls[int(rest)], verb)()
                else:
                    say("FAILED", verb + ":", "unknown command")
            except Exception as e:  # reported, and the phone goes on
                say("FAILED", verb + ":", repr(e).replace("\n", " "))
        for n, call in self.calls.items():
            if call.state is not CallState.CLOSED:
                self.save(n)
        await runtime.close()

    async def answer(self, n: int):
        try:
            await self.calls[n].answer()
        except Exception as e:
            say("FAILED", "answer:", repr(e))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--server", required=True, help="host:port of siaga's SIP (UDP)")
    p.add_argument("--port", type=int, required=True, help="our own SIP port")
    p.add_argument("--tone", type=float, required=True, help="Hz")
    p.add_argument("--dir", required=True, help="where call-N.wav files go")
    asyncio.run(Phone(p.parse_args()).run())


if __name__ == "__main__":
    main()
