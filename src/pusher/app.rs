//! Pusher apps: `--pusher-app ID:KEY:SECRET`.

use std::sync::Arc;

/// One Pusher app: its id (in the HTTP API's paths), its key (in the
/// WebSocket path `/app/{key}` and in signatures) and its secret.
pub struct App {
    /// The app id (`/apps/{id}/...`).
    pub id: String,
    /// The public key (`/app/{key}`, `auth_key`, `key:signature`).
    pub key: String,
    /// The secret every signature is made with.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl App {
    /// Parse `ID:KEY:SECRET` (the secret may itself contain `:`).
    pub fn parse(spec: &str) -> Result<App, String> {
        let mut parts = spec.splitn(3, ':');
        let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("--pusher-app is ID:KEY:SECRET".into());
        };
        if !is_ident(id) {
            return Err(format!(
                "--pusher-app: app id {id:?} must be 1 to 128 of [A-Za-z0-9._-]"
            ));
        }
        if !is_ident(key) {
            return Err(format!(
                "--pusher-app {id}: key {key:?} must be 1 to 128 of [A-Za-z0-9._-]"
            ));
        }
        if secret.is_empty() {
            return Err(format!(
                "--pusher-app {id}: the secret is empty: anyone could sign subscriptions and API calls"
            ));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "--pusher-app {id}: the secret contains whitespace or control characters"
            ));
        }
        Ok(App {
            id: id.to_string(),
            key: key.to_string(),
            secret: secret.as_bytes().to_vec(),
        })
    }
}

/// The configured apps.
#[derive(Debug, Default)]
pub struct Apps(Vec<Arc<App>>);

impl Apps {
    /// Parse every `--pusher-app`; ids and keys must be unique.
    pub fn parse(specs: &[String]) -> Result<Apps, String> {
        let mut apps: Vec<Arc<App>> = Vec::new();
        for s in specs {
            let a = App::parse(s)?;
            if apps.iter().any(|b| b.id == a.id) {
                return Err(format!("--pusher-app: app id {} given twice", a.id));
            }
            if apps.iter().any(|b| b.key == a.key) {
                return Err(format!("--pusher-app: key {} given twice", a.key));
            }
            apps.push(Arc::new(a));
        }
        Ok(Apps(apps))
    }

    /// The app with this key.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.0.iter().find(|a| a.key == key)
    }

    /// The app with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.0.iter().find(|a| a.id == id)
    }

    /// Every app.
    pub fn all(&self) -> &[Arc<App>] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let a = App::parse("1:key:se:cret").unwrap();
        assert_eq!((a.id.as_str(), a.key.as_str()), ("1", "key"));
        assert_eq!(a.secret, b"se:cret");
        assert!(App::parse("1:key:").is_err());
        assert!(App::parse("1:key").is_err());
        assert!(App::parse(":key:s").is_err());
        assert!(App::parse("1:k y:s").is_err());
        assert!(Apps::parse(&["1:a:s".into(), "1:b:s".into()]).is_err());
        assert!(Apps::parse(&["1:a:s".into(), "2:a:s".into()]).is_err());
    }
}
