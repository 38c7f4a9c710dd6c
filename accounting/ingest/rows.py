"""The rows the parser makes and the loader COPYs: their columns, in COPY
order, and `_Binary`, which formats them in COPY's binary format."""
import psycopg
from psycopg.copy import Writer

# What a parsed row holds, in COPY order, with the type it is sent as in
# COPY's binary format (times: int8 microseconds since 2000-01-01, which is
# timestamptz's binary form). MaxRSS is only known once the steps after an
# allocation have passed, the portal job (when the loader looks it up) later:
# both last.
COLUMNS = (
    ("cluster_id", "int8"), ("job_id", "text"), ("job_name", "text"), ("posix_user", "text"), ("account", "text"),
    ("partition", "text"), ("state", "text"), ("exit_code", "int4"), ("exit_signal", "int4"),
    ("alloc_cpus", "int4"), ("alloc_gpus", "int4"), ("elapsed_seconds", "int8"), ("cpu_seconds", "int8"),
    ("req_mem_mb", "int8"), ("submit", "int8"), ("start", "int8"), ("end", "int8"),
    ("user_id", "int8"), ("project_id", "int8"), ("unmapped", "bool"), ("ingested", "int8"), ("updated", "int8"),
    ("max_rss_mb", "int8"), ("portal_job_id", "int8"),
)
COPY_TYPES = [kind for _, kind in COLUMNS]
RSS = len(COLUMNS) - 2  # index of max_rss_mb in a row
COPY_COLUMNS = ", ".join(f'"{name}"' for name, _ in COLUMNS)


class _Binary:
    """Formats rows in COPY's binary format (psycopg's own formatting, to
    bytes instead of the connection): writer() -> write(row) ..., finish()."""

    class _Buffer(Writer):
        def __init__(self):
            self.data = bytearray()

        def write(self, data):
            self.data += data

    def __init__(self, cursor):
        self.cursor = cursor
        self.copy = self.buffer = None

    def writer(self):
        self.buffer = self._Buffer()
        self.copy = psycopg.Copy(self.cursor, binary=True, writer=self.buffer)
        self.copy.set_types(COPY_TYPES)
        return self.copy.write_row

    def finish(self, rows):
        """The `rows` rows written, signature included, trailer not (b"" for none)."""
        self.copy.finish(None)
        data, self.copy, self.buffer = self.buffer.data, None, None
        if not rows:
            return b""
        assert data.endswith(TRAILER)
        return bytes(data[:-len(TRAILER)])


TRAILER = b"\xff\xff"  # the end of COPY's binary format
