"""A task with a bug: it raises, and dirt records it as an error with the remote traceback."""


def execute(ctx):
    settings = {"retries": 3}
    return {"success": True, "reason": f"timeout is {settings['timeout']}"}
