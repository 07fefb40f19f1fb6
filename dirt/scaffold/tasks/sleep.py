"""Sleep for args.seconds (default 1), logging each second: a stand-in for a long job."""

import time

TIMEOUT = 600


def execute(ctx):
    seconds = float(ctx.args.get("seconds", 1))
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        ctx.log(f"slept {time.monotonic() - started:.0f} of {seconds:g} s")
        time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - started))))
    return {"success": True, "reason": f"slept {seconds:g} s"}
