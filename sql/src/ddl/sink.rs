//! `CREATE SINK` and `CREATE SILENCE`: objects the alert manager delivers through and obeys.

use crate::*;

impl Tocsin {
    /// `CREATE SINK`: the connector checks the options.
    pub(crate) async fn create_sink(
        &self,
        name: String,
        connector: String,
        options: Options,
    ) -> Result<StatementResult> {
        let mut catalog = self.catalog.lock().await;
        exists_check(&catalog, &name)?;
        if self.sinks().is_none() {
            return Err(SqlError::unsupported(
                "CREATE SINK: nothing delivers notifications here (sinks are delivered by tocsin serve)",
            ));
        }
        // The connector checks the options by making the sink.
        tocsin_connectors::registry::build_sink(&connector, "check", &options)?;
        let sql = sink_sql(&name, &connector, &options);
        Ok(catalog.register(CatalogEntry {
            name,
            schema: Arc::new(Schema::empty()),
            sql,
            def: ObjectDef::Sink { connector, options },
            system: false,
        }))
    }

    /// `CREATE SILENCE`: matchers and times, recorded as absolute times.
    pub(crate) async fn create_silence(
        &self,
        name: String,
        options: Options,
    ) -> Result<StatementResult> {
        let mut catalog = self.catalog.lock().await;
        exists_check(&catalog, &name)?;
        let (silence, recorded) = Silence::parse(options, self.engine.clock().now() as i64)?;
        let sql = format!(
            "CREATE SILENCE {}{}",
            quote_ident(&name),
            options_sql(&recorded)
        );
        Ok(catalog.register(CatalogEntry {
            name,
            schema: Arc::new(Schema::empty()),
            sql,
            def: ObjectDef::Silence(silence),
            system: false,
        }))
    }
}
