"""Echo the record and the task's arguments into the log: the smallest task there is."""


def execute(ctx):
    message = ctx.args.get("message", "hello from dirt")
    ctx.log(f"record {ctx.record['name']} on platform {ctx.platform}")
    ctx.log(message)
    return {"success": True, "reason": message}
