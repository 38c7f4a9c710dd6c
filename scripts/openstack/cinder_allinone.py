"""All of cinder in ONE process for the Nephele test bed: cinder-api (on
eventlet's WSGI server, as cinder-api ran for years), cinder-scheduler and a
cinder-volume service with the fake volume driver, talking over
oslo.messaging's in-memory `fake:/` transport.

usage: python cinder_allinone.py CONFIG_FILE READY_FILE PORT
Writes READY_FILE once the scheduler knows the volume backend.
"""
from cinder import monkey_patch; monkey_patch.patch()  # noqa

import os
import signal
import sys

CONFIG_FILE, READY_FILE, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = ["cinder-api", "--config-file", CONFIG_FILE]

import eventlet  # noqa: E402
import eventlet.wsgi  # noqa: E402
from oslo_log import log as logging  # noqa: E402

from cinder.wsgi import wsgi as cinder_wsgi  # noqa: E402

application = cinder_wsgi.initialize_application()  # parses the config, rpc.init

from cinder import service  # noqa: E402
from cinder.common import constants  # noqa: E402

LOG = logging.getLogger("nephele.cinder_allinone")
BACKEND = "fake"


def _report_state(self):
    """cinder's Service.report_state updates the record of the class-wide
    `Service.service_id`, i.e. of the LAST service created in the process:
    with two services in one process the volume service would never report
    and the scheduler would soon call it down. Report on our own record."""
    from cinder import context, objects

    own_id = getattr(self, "origin_service_id", None)
    if own_id is None:
        return _original_report_state(self)
    try:
        ref = objects.Service.get_by_id(context.get_admin_context(), own_id)
        ref.report_count += 1
        ref.save(retry=False)
    except Exception:  # noqa: BLE001 - keep the heartbeat timer alive
        LOG.exception("heartbeat of %s failed", self.binary)


_original_report_state = service.Service.report_state
service.Service.report_state = _report_state


def _start_services():
    # The volume service first: the scheduler asks every backend for its
    # capabilities when it starts and otherwise waits up to 60 s for them.
    host = "%s@%s" % (service.CONF.host, BACKEND)
    vol = service.Service.create(host=host, service_name=BACKEND,
                                 binary=constants.VOLUME_BINARY, coordination=True)
    vol.start()
    sched = service.Service.create(binary=constants.SCHEDULER_BINARY)
    sched.start()
    states = sched.manager.driver.host_manager.service_states
    for _ in range(240):
        if any(k.startswith(host) for k in states):
            break
        eventlet.sleep(0.25)
    else:
        LOG.error("the scheduler never heard of backend %s", host)
        os._exit(3)
    with open(READY_FILE + ".tmp", "w") as fh:
        fh.write("%d\n" % os.getpid())
    os.replace(READY_FILE + ".tmp", READY_FILE)
    LOG.info("cinder all-in-one ready")
    return sched, vol


def main():
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    signal.signal(signal.SIGINT, lambda *a: os._exit(0))
    sock = eventlet.listen(("127.0.0.1", PORT))
    eventlet.spawn(eventlet.wsgi.server, sock, application, log=sys.stderr,
                   keepalive=True, socket_timeout=300)
    try:
        _start_services()
    except Exception:
        LOG.exception("cinder services failed to start")
        os._exit(2)
    while True:
        eventlet.sleep(3600)


main()
