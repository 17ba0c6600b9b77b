//! Prometheus: `FROM PROMETHEUS` takes remote write at `POST /v1/ingest/<source>` (and
//! `POST /api/v1/write` for the source named `prometheus`), `FROM PROMETHEUS SCRAPE` scrapes
//! exporters ([`scrape`]), both into the metrics shape ([`crate::metrics`]); see
//! docs/ingest.md.

pub mod exposition;
pub mod remote_write;
pub mod scrape;

pub use scrape::PrometheusScrape;

use crate::source::{Columns, Derived, Options, Protocol, SourceConnector};

/// `FROM PROMETHEUS`: remote write 1.0 and 2.0.
pub struct Prometheus;

impl SourceConnector for Prometheus {
    fn name(&self) -> &'static str {
        "PROMETHEUS"
    }
    fn columns(&self) -> Columns {
        Columns::Labels
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example (instance TEXT, job TEXT) FROM PROMETHEUS WITH (retain = '10 minutes')"
    }
    fn derive(&self, _: &Options) -> crate::Result<Derived> {
        Ok(Derived {
            schema: crate::metrics::schema(),
            companions: Vec::new(),
        })
    }
    fn protocol(&self) -> Option<&'static dyn Protocol> {
        Some(&remote_write::RemoteWrite)
    }
}
