//! Who a connection is: TLS required from other machines when it is configured, SCRAM-SHA-256
//! for configured users, the role kept for the session, and the checks each statement passes
//! (role, `--max-sql`).

use super::*;

/// Where a connection's role is kept in its metadata once it has authenticated.
pub(super) const ROLE: &str = "tocsin.role";

/// PBKDF2 iterations of the SCRAM secrets (PostgreSQL's default).
pub(super) const SCRAM_ITERATIONS: usize = 4096;

/// The SCRAM secrets of the pg users, derived once at start; passwords are not kept.
pub(super) struct UserBook {
    users: std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// `--pg-password`'s secret, for any other user name.
    others: Option<(Vec<u8>, Vec<u8>)>,
    /// Key of the salts given for unknown user names (see [`UserBook::salt`]).
    decoy: Vec<u8>,
}

impl UserBook {
    pub(super) fn new(c: &Credentials) -> UserBook {
        let secret = |password: &str| {
            let salt = UserBook::salt(&random_nonce(), &random_nonce().into_bytes());
            let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            (salt, salted)
        };
        UserBook {
            users: c
                .pg_users
                .iter()
                .map(|u| (u.name.clone(), secret(&u.password)))
                .collect(),
            others: c.pg_password.as_deref().map(secret),
            decoy: random_nonce().into_bytes(),
        }
    }

    /// 16 bytes from `text` and `key`: random for a random text, the same for the same user
    /// name, so a salt looks alike for users who exist and who do not, and stays the same
    /// across attempts either way.
    fn salt(text: &str, key: &[u8]) -> Vec<u8> {
        gen_salted_password(text, key, 1)[..16].to_vec()
    }
}

impl Debug for UserBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserBook({} users)", self.users.len())
    }
}

#[async_trait]
impl AuthSource for UserBook {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let (salt, salted) = match self.users.get(user).or(self.others.as_ref()) {
            Some(s) => s.clone(),
            // An unknown user goes through the same exchange with a secret nobody knows, so
            // the answer does not tell which user names exist.
            None => (
                UserBook::salt(user, &self.decoy),
                gen_salted_password(&random_nonce(), &self.decoy, 1),
            ),
        };
        Ok(Password::new(Some(salt), salted))
    }
}

/// A FATAL error that ends a connection's startup.
pub(super) fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message.into(),
    )))
}

/// Connection start: TLS required from other machines when it is configured, then the role of
/// the user: everyone is admin when no credential is configured; a configured user (or any name
/// with `--pg-password`) authenticates with SCRAM-SHA-256; with `--read-open` any other name is
/// a reader without a password.
pub(super) struct Startup {
    pub(super) driver: AuthDriver<DefaultServerParameterProvider>,
    pub(super) scram: Option<ScramAuth>,
    pub(super) credentials: Credentials,
    pub(super) tls: bool,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) app: std::sync::Weak<crate::state::App>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // A role is only ever what this handler sets, never a startup parameter.
                client.metadata_mut().remove(ROLE);
                if self.tls
                    && !client.is_secure()
                    && !crate::limits::is_loopback(client.socket_addr().ip())
                {
                    self.metrics.refused(Refusal::NotTls);
                    return Err(fatal(
                        "28000",
                        "this server requires TLS from other machines: connect with sslmode=require (or verify-full)",
                    ));
                }
                if let Some(why) = self.app.upgrade().and_then(|a| a.joining()) {
                    return Err(fatal("57P03", why));
                }
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let c = &self.credentials;
                let (role, password) = if !c.any() {
                    (Some(Access::Admin), false)
                } else if let Some(role) = c.pg_role(&user) {
                    (Some(role), true)
                } else if c.read_open {
                    (Some(Access::Read), false)
                } else {
                    (None, true)
                };
                if let Some(role) = role {
                    client
                        .metadata_mut()
                        .insert(ROLE.to_string(), role.as_str().to_string());
                }
                match (&self.scram, password) {
                    (Some(scram), true) => {
                        self.driver
                            .begin_authentication(client, scram.create())
                            .await?
                    }
                    _ => AuthOutcome::Authenticated {
                        final_message: None,
                        identity: None,
                    },
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.driver
                    .complete_authentication(client, final_message)
                    .await
            }
        }
    }
}

/// The role of an authenticated connection.
pub(super) fn role_of<C: ClientInfo>(client: &C) -> Option<Access> {
    client
        .metadata()
        .get(ROLE)
        .and_then(|r| crate::auth::scope(r).ok())
}

/// Refuses statements the connection's role may not run (SQLSTATE 42501), before any runs.
pub(super) fn permitted<C: ClientInfo>(
    app: &AppRef,
    client: &C,
    statements: &[Located],
    text: &str,
) -> Result<(), Box<ErrorInfo>> {
    let have = role_of(client);
    let denied = match have {
        Some(have) => crate::auth::first_denied(have, statements),
        None => (!statements.is_empty()).then(|| (0, statements[0].statement.access())),
    };
    let Some((i, need)) = denied else {
        return Ok(());
    };
    app.metrics.refused(Refusal::Forbidden);
    let user = client.metadata().get("user").cloned().unwrap_or_default();
    let mut e = SqlError::new(
        ErrorKind::Plan,
        format!(
            "permission denied: user \"{user}\" ({} role) may not run this statement, it needs the {} role",
            have.map_or("no", Access::as_str),
            need.as_str()
        ),
    )
    .in_statement(i);
    e.line = Some(statements[i].start.line);
    e.column = Some(statements[i].start.column);
    let mut info = error_info(&e, text);
    info.code = "42501".into();
    Err(Box::new(info))
}

/// Refuses SQL text over `--max-sql` (SQLSTATE 54000).
pub(super) fn within_limit(app: &AppRef, text: &str) -> Result<(), Box<ErrorInfo>> {
    let max = app.limits.max_sql;
    if text.len() <= max {
        return Ok(());
    }
    app.metrics.refused(Refusal::SqlTooLong);
    Err(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "54000".into(),
        format!(
            "the query text is {} bytes, over the limit of {max} (--max-sql)",
            text.len()
        ),
    )))
}
