-- The embedded default: created by `tocsin serve` on a data dir with no catalog.
-- Every sample is kept on disk for 24 hours (docs/history.md).
CREATE SOURCE host FROM HOST WITH (interval = '5s', retain = '15 minutes', history = '24 hours');

-- Per-minute average, minimum and maximum of every metric, kept 7 days; per hour, from those,
-- kept 90 days. `total` and `samples` keep the hourly average exact.
CREATE VIEW host_1m AS
  SELECT date_bin(INTERVAL '1 minute', ts) AS ts, host, metric, device,
         avg(value) AS avg, min(value) AS min, max(value) AS max,
         sum(value) AS total, count(*) AS samples
  FROM host GROUP BY 1, host, metric, device
  WITH (history = '7 days');

CREATE VIEW host_1h AS
  SELECT date_bin(INTERVAL '1 hour', ts) AS ts, host, metric, device,
         sum(total) / sum(samples) AS avg, min(min) AS min, max(max) AS max,
         sum(total) AS total, sum(samples) AS samples
  FROM host_1m GROUP BY 1, host, metric, device
  WITH (history = '90 days');

-- Alerts of the starter rules go to tocsin's own log.
CREATE SINK log TO LOG;

-- The latest value of every metric of every host.
CREATE VIEW host_latest AS
  SELECT DISTINCT ON (host, metric, device) host, metric, device, value, ts
  FROM host ORDER BY host, metric, device, ts DESC;

-- CPU busy % per host, averaged over the last minute.
CREATE VIEW host_cpu AS
  SELECT host, avg(value) AS cpu_percent, count(*) AS samples
  FROM host
  WHERE metric = 'cpu_percent' AND device = '' AND ts > now() - INTERVAL '1 minute'
  GROUP BY host;

CREATE RULE high_cpu AS
  SELECT host, avg(value) AS cpu_percent
  FROM host
  WHERE metric = 'cpu_percent' AND device = '' AND ts > now() - INTERVAL '1 minute'
  GROUP BY host HAVING avg(value) > 90
  WITH (for = '2m', severity = 'warning', summary = 'CPU {{cpu_percent}}% busy on {{host}}', sink = 'log');

CREATE RULE low_disk_free AS
  SELECT host, device AS mount, min(value) AS used_percent
  FROM host
  WHERE metric = 'disk_used_percent' AND ts > now() - INTERVAL '1 minute'
  GROUP BY host, device HAVING min(value) > 90
  WITH (for = '5m', severity = 'warning', summary = '{{mount}} on {{host}} is {{used_percent}}% full', sink = 'log');

CREATE RULE memory_pressure AS
  SELECT host, avg(value) AS mem_used_percent
  FROM host
  WHERE metric = 'mem_used_percent' AND ts > now() - INTERVAL '1 minute'
  GROUP BY host HAVING avg(value) > 90
  WITH (for = '2m', severity = 'critical', summary = 'memory {{mem_used_percent}}% used on {{host}}', sink = 'log');

-- Metrics from the tools operators already run (docs/ingest.md): Prometheus and Grafana Alloy
-- remote write to POST /api/v1/write, OpenTelemetry SDKs and the Collector export to
-- POST /v1/metrics. Kept in memory 15 minutes and on disk 24 hours.
CREATE SOURCE prometheus FROM PROMETHEUS WITH (retain = '15 minutes', history = '24 hours');
CREATE SOURCE otlp FROM OTLP WITH (retain = '15 minutes', history = '24 hours');
