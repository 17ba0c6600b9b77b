//! `EMAIL`: a plain-text email per notification over SMTP, with lettre.
//!
//! Options: `server` = `smtp://host[:port]` (default port 25; STARTTLS when the server offers
//! it) or `smtps://host[:port]` (TLS from the first byte, default port 465); `tls` = `none`,
//! `starttls` (required) or `tls` overrides what the scheme implies; `username`/`password`;
//! `from`; `to` (several, comma-separated); `timeout` (default 30s). The subject is
//! `[FIRING] rule: summary` or `[RESOLVED] rule: summary`; the body lists labels, values and times.
//! With `group_by`, one message per group: subject `[FIRING:3, RESOLVED:1] rule=...`, and a body
//! listing every alert of the group.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::webhook::error_chain;
use super::{Group, Notification, Sink, SinkError, SinkOptions};

pub struct Email {
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    None,
    Opportunistic,
    StartTls,
    Wrapper,
}

impl Email {
    pub fn new(options: &SinkOptions) -> Result<Self, String> {
        let server = options.required("server", "smtp://127.0.0.1:25")?;
        let (scheme, rest) = server.split_once("://").ok_or_else(|| {
            format!("invalid server '{server}': use smtp://host:port or smtps://host:port")
        })?;
        let (mode, default_port) = match scheme.to_lowercase().as_str() {
            "smtp" => (TlsMode::Opportunistic, 25),
            "smtps" => (TlsMode::Wrapper, 465),
            other => {
                return Err(format!(
                    "invalid server '{server}': scheme {other} is not smtp or smtps"
                ))
            }
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("invalid port in server '{server}'"))?,
            ),
            None => (rest, default_port),
        };
        if host.is_empty() {
            return Err(format!("invalid server '{server}': no host"));
        }
        let mode = match options.get("tls").map(str::to_lowercase).as_deref() {
            None => mode,
            Some("none") => TlsMode::None,
            Some("starttls") => TlsMode::StartTls,
            Some("tls") => TlsMode::Wrapper,
            Some(other) => return Err(format!("unknown tls '{other}': use none, starttls or tls")),
        };
        let tls_params = || {
            TlsParameters::new(host.to_string()).map_err(|e| format!("TLS set-up for {host}: {e}"))
        };
        let tls = match mode {
            TlsMode::None => Tls::None,
            TlsMode::Opportunistic => Tls::Opportunistic(tls_params()?),
            TlsMode::StartTls => Tls::Required(tls_params()?),
            TlsMode::Wrapper => Tls::Wrapper(tls_params()?),
        };
        let timeout = options.duration("timeout", Duration::from_secs(30))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        match (options.get("username"), options.get("password")) {
            (Some(u), Some(p)) => {
                builder = builder.credentials(Credentials::new(u.to_string(), p.to_string()))
            }
            (None, None) => {}
            _ => return Err("username and password go together".into()),
        }
        let mailbox = |key: &str, text: &str| -> Result<Mailbox, String> {
            text.trim()
                .parse()
                .map_err(|e| format!("invalid address '{}' in {key}: {e}", text.trim()))
        };
        let from = mailbox("from", options.required("from", "tocsin@example.com")?)?;
        let to = options
            .required("to", "ops@example.com, oncall@example.com")?
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(|t| mailbox("to", t))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err("option 'to' names no address".into());
        }
        Ok(Email {
            from,
            to,
            transport: builder.build(),
            server: server.to_string(),
        })
    }

    /// The message for a notification.
    pub fn message(&self, n: &Notification) -> Result<Message, SinkError> {
        self.build(n.subject(), n.text())
    }

    /// One message for a group, listing its alerts.
    pub fn group_message(&self, g: &Group) -> Result<Message, SinkError> {
        self.build(g.subject(), g.text())
    }

    fn build(&self, subject: String, body: String) -> Result<Message, SinkError> {
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for t in &self.to {
            m = m.to(t.clone());
        }
        m.body(body)
            .map_err(|e| SinkError::new(format!("building the email: {e}")))
    }

    async fn deliver(&self, message: Message) -> Result<(), SinkError> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| SinkError::new(format!("SMTP {}: {}", self.server, error_chain(&e))))
    }
}

#[async_trait::async_trait]
impl Sink for Email {
    async fn send(&self, n: &Notification) -> Result<(), SinkError> {
        self.deliver(self.message(n)?).await
    }

    async fn send_group(&self, g: &Group) -> Result<(), SinkError> {
        self.deliver(self.group_message(g)?).await
    }
}

/// `TO EMAIL` in the registry (see [`super::SinkConnector`]).
pub struct EmailConnector;

impl super::SinkConnector for EmailConnector {
    fn name(&self) -> &'static str {
        "EMAIL"
    }
    fn build(
        &self,
        _name: &str,
        options: &super::SinkOptions,
    ) -> crate::Result<Box<dyn super::Sink>> {
        Ok(Box::new(Email::new(options)?))
    }
    fn example(&self) -> &'static str {
        "CREATE SINK example TO EMAIL WITH (server = 'smtp://127.0.0.1:2525', from = 'tocsin@example.com', to = 'ops@example.com')"
    }
}
