"""Run a shell command (args.command) on the host; success when it exits 0.

args: command (required), cwd (optional, default: the task's work folder).
"""


def execute(ctx):
    command = ctx.args.get("command")
    if not command:
        return {"success": False, "reason": "no command given (args.command)"}
    ctx.log(f"$ {command}")
    code = ctx.run(command, cwd=ctx.args.get("cwd"))
    return {"success": code == 0, "reason": f"exit code {code}", "exit_code": code}
