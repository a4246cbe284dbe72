"""The Celery app of the interop tests: one task that writes what it got."""
import json
import os

from celery import Celery

app = Celery("tasks", broker=os.environ["DASHI_BROKER"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="tasks.add")
def add(x, y, z=0):
    with open(os.environ["DASHI_TASK_OUT"], "a") as f:
        f.write(json.dumps({"sum": x + y + z}) + "\n")
    return x + y + z


if __name__ == "__main__":
    # send: publish one task the way an application does.
    r = app.send_task("tasks.add", args=(2, 3), kwargs={"z": 1}, priority=0)
    print(json.dumps({"sent": r.id}), flush=True)
