//! Option values that are secrets, and how they are shown. `SHOW`, the HTTP catalog and error
//! messages show a statement with these values masked; the catalog log keeps them as written.
//! The option names are the same in every connector that takes them.

/// Options whose whole value is a secret.
const SECRET: &[&str] = &[
    "password",
    "bearer_token",
    "headers",
    "community",
    "auth_password",
    "priv_password",
];

/// How an option's value is shown to users: secrets as `********`; a URL without its user
/// information, path and query (a webhook URL's path is often its token, as Slack's are).
pub fn shown(key: &str, value: &str) -> String {
    if SECRET.contains(&key) {
        return "********".to_string();
    }
    if key == "url" {
        return shown_url(value);
    }
    value.to_string()
}

fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "********".to_string();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let masked_user = if authority.contains('@') {
        "********@"
    } else {
        ""
    };
    let masked_tail = if tail.is_empty() || tail == "/" {
        tail
    } else {
        "/********"
    };
    format!("{scheme}://{masked_user}{host}{masked_tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(shown("community", "s3cret"), "********");
        assert_eq!(shown("auth_password", "x"), "********");
        assert_eq!(shown("targets", "10.0.0.1:161"), "10.0.0.1:161");
        assert_eq!(
            shown("url", "https://hooks.slack.com/services/T0/B0/XyZ"),
            "https://hooks.slack.com/********"
        );
        assert_eq!(
            shown("url", "http://user:pw@127.0.0.1:9093/"),
            "http://********@127.0.0.1:9093/"
        );
        assert_eq!(
            shown("url", "http://127.0.0.1:9093"),
            "http://127.0.0.1:9093"
        );
        assert_eq!(shown("url", "not a url"), "********");
    }
}
