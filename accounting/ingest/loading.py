"""The database side of an ingest: the user and project mappings, and the
loader thread that COPYs each chunk into accounting_usagerecord, straight
or through a staging table and a merge (see the package docstring, step 3)."""
import queue
import threading
from datetime import date, timedelta
from operator import itemgetter

import psycopg
from django.db import connection
from django.utils import timezone

from .rollups import PARTIAL, PARTIALS, ROLLUP_DELETE, ROLLUP_FROM_PARTIALS
from .rows import COLUMNS, COPY_COLUMNS, COPY_TYPES, TRAILER

EPOCH_DAY = date(1970, 1, 1)
MAX_SAVEPOINTS = 48  # chunks COPYed as new per batch (a subtransaction each; a backend caches 64)

_ACCOUNT_MAP = """
    SELECT account, CASE WHEN count(*) = 1 THEN min(project_id) END AS project_id FROM (
        SELECT ca.account, ca.project_id FROM clusters_clusteraccount ca WHERE ca.cluster_id = %(cluster)s
        UNION ALL
        SELECT p.slug, p.id FROM projects_project p
         WHERE NOT EXISTS (SELECT 1 FROM clusters_clusteraccount c1
                            WHERE c1.cluster_id = %(cluster)s AND (c1.project_id = p.id OR c1.account = p.slug))
    ) m GROUP BY account
"""
_USER_MAP = "SELECT username, user_id FROM clusters_posixaccount WHERE cluster_id = %(cluster)s"


def load_maps(cluster_id, cursor=None):
    """({POSIX name: user id}, {Slurm account: project id}) of a cluster; an
    account claimed twice maps to nothing."""
    own = cursor is None
    cursor = cursor or connection.cursor()
    try:
        cursor.execute(_USER_MAP, {"cluster": cluster_id})
        users = dict(cursor.fetchall())
        cursor.execute(_ACCOUNT_MAP, {"cluster": cluster_id})
        projects = {account: pk for account, pk in cursor.fetchall() if pk is not None}
        return users, projects
    finally:
        if own:
            cursor.close()


# Compared to decide whether a stored record changed.
COMPARED = ("job_name", "posix_user", "account", "partition", "state", "exit_code", "exit_signal", "alloc_cpus",
            "alloc_gpus", "elapsed_seconds", "cpu_seconds", "req_mem_mb", "max_rss_mb", "submit", "start", "end",
            "user_id", "project_id", "portal_job_id", "unmapped")

# Any chunk that is not all new goes through the staging table: one look-up
# of each row by the unique key (`o`), then update what differs and insert
# what is missing. Returns (updated, inserted, days). Run with MERGE_SETTINGS:
# whatever the size of the table, the unique index is the way to a chunk's
# rows (a hash join would read the whole table for every chunk).
MERGE = f"""
    WITH m AS MATERIALIZED (
        SELECT t.*, o.id AS old_id, o."end" AS old_end, o.ingested AS old_ingested,
               ({", ".join(f'o."{c}"' for c in COMPARED)}) IS DISTINCT FROM ({", ".join(f't."{c}"' for c in COMPARED)})
                   AS changed
          FROM acct_tmp t
          LEFT JOIN accounting_usagerecord o ON o.cluster_id = t.cluster_id AND o.job_id = t.job_id
    ),
    upd AS (
        UPDATE accounting_usagerecord u
           SET ({", ".join(f'"{c}"' for c in COMPARED)}) = ({", ".join(f'm."{c}"' for c in COMPARED)}),
               updated = m.updated
          FROM m
         WHERE m.old_id IS NOT NULL AND m.changed AND u.id = m.old_id
        RETURNING m.old_end, u."end" AS new_end, m.old_ingested <> m.ingested AS counted
    ),
    ins AS (
        INSERT INTO accounting_usagerecord ({COPY_COLUMNS})
        SELECT {", ".join(f'm."{name}"' for name, _ in COLUMNS)} FROM m WHERE m.old_id IS NULL
        RETURNING "end"
    )
    SELECT (SELECT count(*) FILTER (WHERE counted) FROM upd), (SELECT count(*) FROM ins),
           ARRAY(SELECT DISTINCT (e AT TIME ZONE 'UTC')::date FROM (
                     SELECT old_end FROM upd UNION ALL SELECT new_end FROM upd UNION ALL SELECT "end" FROM ins) x(e))
"""
MERGE_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}
STAGING = (f"CREATE TEMPORARY TABLE acct_tmp ON COMMIT DROP AS SELECT {COPY_COLUMNS} FROM accounting_usagerecord "
           "WITH NO DATA")
# Before a chunk: does one of the sampled job ids exist; the portal jobs the chunk's job names give (id, first
# 12 hex digits of their uid), as the ingest's transaction sees them; the largest record id so far.
LOOKUP = """
    SELECT EXISTS (SELECT 1 FROM accounting_usagerecord WHERE cluster_id = %(cluster)s AND job_id = ANY(%(sample)s)),
           j.ids, j.hexes, (SELECT max(id) FROM accounting_usagerecord)
      FROM (SELECT array_agg(id) AS ids, array_agg(left(replace(uid::text, '-', ''), 12)) AS hexes FROM jobs_job
             WHERE cluster_id = %(cluster)s AND id = ANY(%(pks)s::bigint[])) j
"""
# A job id twice in one chunk: the last line wins.
DEDUPE = "DELETE FROM acct_tmp a USING acct_tmp b WHERE a.job_id = b.job_id AND a.ctid < b.ctid"


class _Loader(threading.Thread):
    """Loads chunks into accounting_usagerecord on the connection `pgconn`
    (the raw psycopg connection of Django's, inside its transaction), while
    the caller's thread parses the next ones. Nothing else may use the
    connection until `finish` returns."""

    def __init__(self, pgconn, cluster_id, fresh=False):
        super().__init__(name="accounting-ingest-loader", daemon=True)
        self.pgconn = pgconn
        self.cluster_id = cluster_id
        # fresh: the cluster had no record before this batch, so the records of
        # a day are all in this batch's chunks: their sums are taken chunk by
        # chunk, and a day rolled up once a chunk without it comes
        self.fresh = fresh
        self.summed = None  # the largest id before the last chunk COPYed as new, until its sums are taken
        self.rolled = set()  # epoch days rolled up already
        self.redo = set()  # epoch days to roll up at the end, in full
        self.queue = queue.Queue(maxsize=2)
        self.error = None
        self.inserted = self.updated = 0
        self.days = set()  # dates
        self.epoch_days = set()  # end // 86400 of chunks COPYed as new
        self.previous = set()  # epoch days of the last chunk COPYed as new
        self.partials = False  # acct_agg made
        self.savepoints = 0  # taken in this batch
        self.savepoint = False  # one is open
        self.staged = False
        self.settings = None  # the settings MERGE_SETTINGS changes, as they were

    def run(self):
        try:
            with self.pgconn.cursor() as cursor:
                while (chunk := self.queue.get()) is not None:
                    if self.error is None:
                        self.load(cursor, chunk)
                if self.error is None:
                    self.roll(cursor, None, None)
                    if self.savepoint:
                        cursor.execute("RELEASE SAVEPOINT acct_chunk")
        except BaseException as exc:  # handed to the caller's thread by finish()
            self.error = exc
            while self.queue.get() is not None:
                pass

    def put(self, chunk):
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def finish(self, abort=False):
        if abort and self.error is None:
            self.error = _Abort()
        self.queue.put(None)
        self.join()
        if self.error is not None and not isinstance(self.error, _Abort):
            raise self.error

    def copy(self, cursor, table, chunk):
        with cursor.copy(f"COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(COPY_TYPES)
            if chunk.data:
                copy.write(chunk.data)
            write = copy.write_row
            for row in chunk.rows:
                write(row)
            if chunk.data and not chunk.rows:
                copy.write(TRAILER)

    def load(self, cursor, chunk):
        rows = chunk.rows
        as_new = not chunk.repeat and self.savepoints < MAX_SAVEPOINTS  # may go straight into the table
        with self.pgconn.pipeline():  # one round trip
            if self.savepoint:
                cursor.execute("RELEASE SAVEPOINT acct_chunk")
                self.savepoint = False
            if as_new:
                cursor.execute("SAVEPOINT acct_chunk")
                self.savepoint, self.savepoints = True, self.savepoints + 1
            pks = "{%s}" % ",".join(map(str, map(itemgetter(1), chunk.portal)))  # an array literal: quick
            cursor.execute(LOOKUP, {"cluster": self.cluster_id, "sample": chunk.sample if as_new else [], "pks": pks})
            exists, job_ids, job_hexes, last_id = cursor.fetchone()
        self.roll(cursor, chunk, last_id or 0)
        if job_ids:  # the portal jobs named
            jobs = dict(zip(job_ids, job_hexes))
            for i, pk, hex_ in chunk.portal:
                if jobs.get(pk) == hex_:
                    rows[i] = rows[i][:-1] + (pk,)
        if as_new and not exists:  # all new, most likely: straight into the table
            try:
                self.copy(cursor, "accounting_usagerecord", chunk)
            except psycopg.errors.UniqueViolation:  # an id the sample missed
                cursor.execute("ROLLBACK TO SAVEPOINT acct_chunk")
                if self.fresh:  # (cannot happen in a first batch) the rollup done since went too: all at the end
                    self.redo |= self.rolled | self.previous | chunk.days
                    self.fresh = False
            else:
                self.inserted += chunk.records
                self.epoch_days |= chunk.days
                self.copied(cursor, chunk, last_id or 0)
                return
        if self.staged:
            cursor.execute("TRUNCATE acct_tmp")
        else:
            cursor.execute("DROP TABLE IF EXISTS acct_tmp")
            cursor.execute(STAGING)
            self.staged = True
        self.copy(cursor, "acct_tmp", chunk)
        if chunk.repeat:
            cursor.execute(DEDUPE)
        if self.settings is None:
            cursor.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in MERGE_SETTINGS))
            self.settings = dict(zip(MERGE_SETTINGS, cursor.fetchone()))
        _set(cursor, MERGE_SETTINGS)
        cursor.execute(MERGE)
        updated, inserted, days = cursor.fetchone()
        _set(cursor, self.settings)
        self.updated += updated
        self.inserted += inserted
        self.days.update(days)
        self.redo |= chunk.days | {(day - EPOCH_DAY).days for day in days}  # rolled up at the end, in full
        self.previous = set()

    def roll(self, cursor, chunk, last_id):
        """Before a chunk goes in (first batches only): take the sums of the
        chunk COPYed before, roll up the days it had and this one has not."""
        if not self.fresh:
            return
        if self.summed is not None:
            if last_id is None:
                cursor.execute("SELECT max(id) FROM accounting_usagerecord")
                last_id = cursor.fetchone()[0] or 0
            cursor.execute(PARTIAL, {"cluster": self.cluster_id, "after": self.summed, "upto": last_id})
            self.summed = None
        if chunk is not None:
            for day in chunk.days & self.rolled:  # back again: at the end, in full
                self.redo.add(day)
        closed = self.previous - (chunk.days if chunk is not None else set()) - self.redo - self.rolled
        if closed:
            days = [EPOCH_DAY + timedelta(days=day) for day in sorted(closed)]
            params = {"cluster": self.cluster_id, "days": days, "now": timezone.now()}
            cursor.execute(ROLLUP_DELETE, params)
            cursor.execute(ROLLUP_FROM_PARTIALS, params)
            self.rolled |= closed

    def copied(self, cursor, chunk, last_id):
        """A chunk went in as new."""
        if self.fresh:
            if not self.partials:
                cursor.execute("DROP TABLE IF EXISTS acct_agg")
                cursor.execute(PARTIALS)
                self.partials = True
            self.summed = last_id
        self.previous = chunk.days


class _Abort(Exception):
    pass


def _set(cursor, settings):
    """Change settings until the end of the transaction (SET LOCAL)."""
    names = list(settings)
    cursor.execute("SELECT " + ", ".join("set_config(%s, %s, true)" for _ in names),
                   [v for name in names for v in (name, settings[name])])


def _portal_jobs(cursor, cluster_id, lines):
    """{pk: first 12 hex digits of the uid} of the cluster's portal jobs, when
    there are at most a quarter as many as lines (none, in a backfill of the
    time before the portal), for the parser to match job names; else None, and
    the loader looks up the jobs a chunk names."""
    cap = lines // 4
    cursor.execute("SELECT count(*) FROM (SELECT 1 FROM jobs_job WHERE cluster_id = %s LIMIT %s) j",
                   [cluster_id, cap + 1])
    if cursor.fetchone()[0] > cap:
        return None
    cursor.execute("SELECT id, left(replace(uid::text, '-', ''), 12) FROM jobs_job WHERE cluster_id = %s",
                   [cluster_id])
    return dict(cursor.fetchall())
