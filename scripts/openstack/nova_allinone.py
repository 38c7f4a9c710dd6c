"""All of nova in ONE process for the Nephele test bed: the compute API
(served by a small threaded WSGI server), conductor, scheduler and a compute
service with the fake virt driver, talking over oslo.messaging's in-memory
`fake:/` transport.

Every transport nova asks for is the same object (nova's functional tests do
the same in their RPCFixture): the API also creates one per cell mapping.

usage: python nova_allinone.py CONFIG_DIR READY_FILE PORT
Writes READY_FILE once the compute host is mapped to its cell. SIGTERM exits
at once (the fake driver has nothing to tear down).
"""
from nova import monkey_patch; monkey_patch.patch(backend='threading')  # noqa

import os
import signal
import socketserver
import sys
import threading
import time
from wsgiref import simple_server

CONFIG_DIR, READY_FILE, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])

import oslo_messaging as messaging  # noqa: E402

from nova import rpc  # noqa: E402

_bus = {}
_bus_lock = threading.Lock()


def _one_transport(url=None):
    with _bus_lock:
        if "bus" not in _bus:
            _bus["bus"] = messaging.get_rpc_transport(
                rpc.CONF, url=None, allowed_remote_exmods=rpc.get_allowed_exmods())
        return _bus["bus"]


rpc.create_transport = _one_transport

os.environ["OS_NOVA_CONFIG_DIR"] = CONFIG_DIR
sys.argv = ["nova-api"]
from nova.wsgi import osapi_compute  # noqa: E402  (parses the config, builds the API)

from oslo_log import log as logging  # noqa: E402

from nova import context, exception, objects, service  # noqa: E402
from nova.compute import rpcapi as compute_rpcapi  # noqa: E402
from nova.conductor import rpcapi as conductor_rpcapi  # noqa: E402
from nova.objects import host_mapping  # noqa: E402
from nova.scheduler import rpcapi as scheduler_rpcapi  # noqa: E402

LOG = logging.getLogger("nephele.nova_allinone")
CONF = rpc.CONF


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _Handler(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):  # one short line per request
        sys.stderr.write("api %s\n" % (fmt % args))


def _start_services():
    services = []
    for binary, topic, alt in (
        ("nova-conductor", conductor_rpcapi.RPC_TOPIC, None),
        ("nova-scheduler", scheduler_rpcapi.RPC_TOPIC, None),
        ("nova-compute", compute_rpcapi.RPC_TOPIC, compute_rpcapi.RPC_TOPIC_ALT),
    ):
        kw = {"binary": binary, "topic": topic}
        if alt:
            kw["topic_alt"] = alt
        svc = service.Service.create(**kw)
        svc.start()
        services.append(svc)
        LOG.info("started %s", binary)
    ctxt = context.get_admin_context()
    for _ in range(120):
        host_mapping.discover_hosts(ctxt)
        try:
            objects.HostMapping.get_by_host(ctxt, CONF.host)
            break
        except exception.HostMappingNotFound:
            time.sleep(0.5)
    else:
        LOG.error("compute host %s never got mapped to a cell", CONF.host)
        os._exit(3)
    with open(READY_FILE + ".tmp", "w") as fh:
        fh.write("%d\n" % os.getpid())
    os.replace(READY_FILE + ".tmp", READY_FILE)
    LOG.info("nova all-in-one ready")
    return services


def main():
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    signal.signal(signal.SIGINT, lambda *a: os._exit(0))
    httpd = simple_server.make_server("127.0.0.1", PORT, osapi_compute.application,
                                      server_class=_Server, handler_class=_Handler)
    threading.Thread(target=httpd.serve_forever, name="api", daemon=True).start()
    try:
        _start_services()
    except Exception:
        LOG.exception("nova services failed to start")
        os._exit(2)
    while True:
        time.sleep(3600)


main()
