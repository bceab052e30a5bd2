"""Prometheus metrics of a daemon, on ``GET /metrics`` (prometheus-client).

Request metrics are counted as requests finish; everything else is read from the engine's
own counters, the disks and the index at scrape time (a collector), so the engine knows
nothing of Prometheus. Labels never carry a client id, a secret or a token: only routes
(the pattern, not the path), methods, statuses, disk ids and reason codes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.process_collector import ProcessCollector

from .engine import modes as M

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _histogram(name: str, doc: str, hist) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], hist.cumulative(), hist.sum)
    return family


class EngineCollector:
    def __init__(self, svc):
        self.svc = svc

    def collect(self):
        svc = self.svc
        if not svc.started or svc.store is None:
            return
        store = svc.store
        cs = store.committer.stats
        yield _histogram("artstore_group_commit_seconds",
                         "Time to make one batch of uploads durable (flush + LMDB commit)",
                         cs.commit_seconds)
        yield _histogram("artstore_group_commit_batch_size", "Uploads per group commit",
                         cs.batch_sizes)
        yield CounterMetricFamily("artstore_uploads_committed", "Uploads made durable",
                                  value=cs.uploads)
        yield CounterMetricFamily("artstore_uploads_failed", "Uploads refused at commit",
                                  value=cs.failed)
        yield GaugeMetricFamily("artstore_group_commit_queue_depth",
                                "Uploads waiting for the next batch",
                                value=store.committer.queue_depth())
        stats = store.stats()
        mode = store.mode
        files = GaugeMetricFamily("artstore_files", "Catalogued files",
                                  labels=["mode", "retention"])
        for retention, count in sorted(stats.get("by_retention", {}).items()):
            files.add_metric([mode, retention], count)
        yield files
        yield GaugeMetricFamily("artstore_stored_bytes", "Bytes of catalogued content",
                                value=stats["bytes"])
        yield GaugeMetricFamily("artstore_wal_sequence", "Newest WAL sequence number",
                                value=stats["wal_seq"])
        yield GaugeMetricFamily("artstore_pending_intents", "WAL intents not yet resolved",
                                value=stats["pending_intents"])
        element = GaugeMetricFamily("artstore_element_mode", "1 for the element's mode",
                                    labels=["mode"])
        for m in M.MODES:
            element.add_metric([m], 1 if m == mode else 0)
        yield element
        report = store.capacity()
        total = GaugeMetricFamily("artstore_disk_total_bytes", "Size of a disk root",
                                  labels=["disk_id", "path"])
        used = GaugeMetricFamily("artstore_disk_used_bytes", "Used bytes of a disk root",
                                 labels=["disk_id", "path"])
        free = GaugeMetricFamily("artstore_disk_free_bytes", "Free bytes of a disk root",
                                 labels=["disk_id", "path"])
        full = GaugeMetricFamily("artstore_disk_status", "1 for a disk root's capacity status",
                                 labels=["disk_id", "status"])
        for d in report["disks"]:
            total.add_metric([d["disk_id"], d["path"]], d["total_bytes"])
            used.add_metric([d["disk_id"], d["path"]], d["used_bytes"])
            free.add_metric([d["disk_id"], d["path"]], d["free_bytes"])
            for status in ("ok", "warning", "critical", "full"):
                full.add_metric([d["disk_id"], status], 1 if d["status"] == status else 0)
        yield from (total, used, free, full)
        if svc.index is not None:
            lag = svc.index.lag()
            yield GaugeMetricFamily("artstore_index_lag_records",
                                    "WAL records the search index has not applied",
                                    value=lag["records_behind"])
            yield GaugeMetricFamily("artstore_index_lag_seconds",
                                    "Age of the oldest WAL record the index has not applied",
                                    value=lag["seconds_behind"])
            yield CounterMetricFamily("artstore_index_commits", "Search index commits",
                                      value=lag["commits"])
        if svc.throttle is not None:
            yield CounterMetricFamily("artstore_token_refused",
                                      "Token requests refused by rate limit or lockout",
                                      value=svc.throttle.refused)
            yield CounterMetricFamily("artstore_token_lockouts", "Sign-in lockouts started",
                                      value=svc.throttle.lockouts)
            yield GaugeMetricFamily("artstore_sign_in_pairs",
                                    "(client, address) pairs with a failure score in memory",
                                    value=len(svc.throttle))
        if svc.malformed is not None:
            yield CounterMetricFamily("artstore_http_malformed_requests",
                                      "Requests refused before routing because they could not "
                                      "be parsed (bad header characters, over-long lines)",
                                      value=svc.malformed.malformed)
        if svc.verifier is not None:
            yield GaugeMetricFamily("artstore_sign_in_verifications",
                                    "Argon2id verifications running or queued",
                                    value=svc.verifier.in_flight)
            yield CounterMetricFamily("artstore_sign_in_busy",
                                      "Sign-ins refused because the verification queue was full",
                                      value=svc.verifier.refused)
        if svc.proven is not None:
            yield CounterMetricFamily("artstore_sign_in_proven",
                                      "Sign-ins let through on a secret proven a moment ago",
                                      value=svc.proven.hits)
        if svc.jobs is not None:
            jobs = GaugeMetricFamily("artstore_jobs_running", "Background jobs running",
                                     labels=["kind"])
            progress = GaugeMetricFamily("artstore_job_progress_ratio",
                                         "Done ÷ total of running jobs", labels=["kind"])
            for job in svc.jobs.running():
                jobs.add_metric([job["kind"]], 1)
                p = job["progress"]
                if p.get("total_bytes"):
                    progress.add_metric([job["kind"]], p["done_bytes"] / p["total_bytes"])
                elif p.get("total_files"):
                    progress.add_metric([job["kind"]], p["done_files"] / p["total_files"])
            yield jobs
            yield progress
            yield from _scrub_metrics(svc)
        if svc.cluster is not None:
            yield from _cluster_metrics(svc.cluster)


def _cluster_metrics(cluster):
    """Membership as this node sees it, the document it holds, and the gossip's cost."""
    members = GaugeMetricFamily("artstore_cluster_members",
                                "Roster members by state, as this node sees them",
                                labels=["state"])
    counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
    if cluster.membership is not None:
        for info in cluster.membership.members().values():
            counts[info.state] = counts.get(info.state, 0) + 1
    for state, n in sorted(counts.items()):
        members.add_metric([state], n)
    yield members
    yield GaugeMetricFamily("artstore_cluster_document_version",
                            "Version of the cluster document this node holds (0: none)",
                            value=cluster.doc.version if cluster.doc else 0)
    yield GaugeMetricFamily("artstore_cluster_on_roster",
                            "1 while this node is on the roster (0: waiting to join)",
                            value=1 if cluster.membership is not None else 0)
    stats = cluster.transport.stats
    for name, key, doc in (
            ("artstore_cluster_sent_bytes", "bytes_sent", "Cluster message bytes sent"),
            ("artstore_cluster_received_bytes", "bytes_received",
             "Cluster message bytes received"),
            ("artstore_cluster_messages_sent", "messages_sent", "Cluster messages sent"),
            ("artstore_cluster_send_failures", "send_failures",
             "Cluster messages that could not be delivered")):
        yield CounterMetricFamily(name, doc, value=stats[key])
    if cluster.replicator is not None:
        rep = cluster.replicator
        for name, key, doc in (
                ("artstore_replication_pushed", "pushed", "Replicas pushed to owners"),
                ("artstore_replication_pulled", "pulled", "Replicas fetched from peers"),
                ("artstore_replication_push_failures", "push_failures",
                 "Pushes that did not end durable on the peer"),
                ("artstore_replication_pull_failures", "pull_failures",
                 "Fetched replicas refused (size, checksum, signature)"),
                ("artstore_replication_changes_refused", "changes_refused",
                 "Changes in a peer's feed refused: not signed by the node that made them")):
            yield CounterMetricFamily(name, doc, value=rep.stats[key])
        last = rep.repairer.last_full_pass or {}
        yield GaugeMetricFamily("artstore_replication_last_full_pass_timestamp_seconds",
                                "When the last complete anti-entropy pass finished (0: never)",
                                value=last.get("finished_at", 0))
        yield GaugeMetricFamily("artstore_replication_under_replicated_files",
                                "Copies owners lacked in the last anti-entropy pass",
                                value=last.get("missing_copies", 0))
        yield CounterMetricFamily("artstore_replication_restored",
                                  "Quarantined files restored from another node",
                                  value=rep.repairer.restored)
    refused = CounterMetricFamily("artstore_cluster_refused",
                                  "Cluster messages and documents refused, by reason code",
                                  labels=["reason"])
    for code, n in sorted(cluster.refused.items()):
        refused.add_metric([code], n)
    yield refused


def _scrub_metrics(svc):
    """Fixity: what the scrubs have verified and found, and when a pass last completed."""
    verified = CounterMetricFamily("artstore_scrub_verified_bytes",
                                   "Bytes re-hashed by scrubs (jobs on record)")
    corrupt = GaugeMetricFamily("artstore_scrub_objects_corrupt",
                                "Objects found damaged or missing by the last scrub pass")
    last = GaugeMetricFamily("artstore_scrub_last_full_pass_timestamp_seconds",
                             "When the last complete scrub pass finished (0: never)")
    records = svc.jobs.list(limit=100, kind="scrub")
    verified.add_metric([], sum((r["progress"].get("done_bytes") or 0) for r in records))
    done = [r for r in records if r["state"] == "succeeded" and r.get("report")]
    outcomes = done[0]["report"].get("outcomes", {}) if done else {}
    corrupt.add_metric([], outcomes.get("corrupt", 0) + outcomes.get("missing", 0))
    last.add_metric([], done[0]["finished_at"] if done else 0)
    yield from (verified, corrupt, last)


class Metrics:
    def __init__(self, svc):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("artstore_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("artstore_http_request_duration_seconds",
                                 "Time from request to answer", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.received = Counter("artstore_http_received_bytes", "Request body bytes received",
                                ["route"], registry=self.registry)
        self.sent = Counter("artstore_http_sent_bytes", "Response body bytes sent",
                            ["route"], registry=self.registry)
        self.token_failures = Counter("artstore_token_failures",
                                      "Token requests that failed, by reason code",
                                      ["reason"], registry=self.registry)
        self.registry.register(EngineCollector(svc))

    def observe_request(self, method: str, route: str, status: int, seconds: float,
                        bytes_in: int, bytes_out: int) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if bytes_in:
            self.received.labels(route).inc(bytes_in)
        if bytes_out:
            self.sent.labels(route).inc(bytes_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)
