"""21-faults: the system under steady chat load while one part fails, on
real servers (two logic instances, two gateways).  After each fault: every
acked message is stored exactly once and reached its recipient (live or by
sync) exactly once live at most, in seq order.

  - kill -9 of one gateway: its clients reconnect to the other and sync;
  - kill -9 of a logic instance mid-load, then a restart on the same port;
  - RabbitMQ stopped and started again (publisher and consumers reconnect);
  - MariaDB down for IM_FAULT_DB_SECONDS (default 30) under load: errors or
    slow acks, never a false ack; the backlog drains;
  - Redis restarted: no seq handed out twice (each sender's acked seqs keep
    rising), routes rebuilt by the gateways' heartbeats.

Usage: 21-faults.py <logic binary> <gateway binary>   (IM_STATE_DIR: infra)
"""
import asyncio
import os
import signal
import sys

from faults import infra, run_with_fault
from imsys import System

DB_SECONDS = int(os.environ.get("IM_FAULT_DB_SECONDS", "30"))


def report(name, summary):
    print("ok   %-28s acked %4d, sender errors %s, reconnects %d%s"
          % (name, summary["acked"], summary["errors"] or "{}", summary["reconnects"],
             ", %d acked under a second id (known window)" % summary["renamed"]
             if summary["renamed"] else ""), flush=True)


async def gateway_kill(sys_):
    async def fault():
        os.kill(sys_.gateways[1].pid, signal.SIGKILL)
    summary = await run_with_fault(sys_, fault)
    sys_.gateways[1].wait()
    sys_.gateways[1] = sys_.start_gateway_at(1)
    return summary


async def logic_kill(sys_):
    async def fault():
        lg = sys_.logics[0]
        os.kill(lg.proc.pid, signal.SIGKILL)
        lg.proc.wait()
        await asyncio.sleep(1)
        await asyncio.get_running_loop().run_in_executor(None, lg.restart)
    return await run_with_fault(sys_, fault)


async def broker_restart(sys_):
    async def fault():
        await asyncio.get_running_loop().run_in_executor(None, infra, "stop", "rabbitmq")
        await asyncio.sleep(2)
        await asyncio.get_running_loop().run_in_executor(None, infra, "up")
    return await run_with_fault(sys_, fault, seconds=20)


async def db_down(sys_):
    async def fault():
        await asyncio.get_running_loop().run_in_executor(None, infra, "stop", "mariadb")
        await asyncio.sleep(DB_SECONDS)
        await asyncio.get_running_loop().run_in_executor(None, infra, "up")
    return await run_with_fault(sys_, fault, seconds=DB_SECONDS + 10)


async def redis_restart(sys_):
    async def fault():
        await asyncio.get_running_loop().run_in_executor(None, infra, "stop", "redis")
        await asyncio.sleep(1)
        await asyncio.get_running_loop().run_in_executor(None, infra, "up")
    return await run_with_fault(sys_, fault, check_seq_rises=True, renamed_ok=True)


def main():
    logic_bin, gateway_bin = sys.argv[1], sys.argv[2]
    with System(logic_bin, gateway_bin, n_logic=2, n_gateways=2) as sys_:
        for name, test in (("gateway_kill", gateway_kill), ("logic_kill", logic_kill),
                           ("broker_restart", broker_restart), ("redis_restart", redis_restart),
                           ("db_down", db_down)):
            report(name, asyncio.run(test(sys_)))


if __name__ == "__main__":
    main()
