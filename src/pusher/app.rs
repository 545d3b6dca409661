//! Pusher apps: `--pusher-app ID:KEY:SECRET` and `--pusher-apps-file PATH`
//! (JSON, see [`AppsFile`]; read once at start: SIGHUP does not re-read it).

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
        App::new("--pusher-app", id, key, secret)
    }

    /// An app from its parts, checked as `--pusher-app` checks them;
    /// `source` (a flag, or a flag and its file) starts every error. An
    /// error never shows the secret.
    pub fn new(source: &str, id: &str, key: &str, secret: &str) -> Result<App, String> {
        if id.is_empty() {
            return Err(format!("{source}: an app id is empty"));
        }
        if !is_ident(id) {
            return Err(format!(
                "{source}: app id {id:?} must be 1 to 128 of [A-Za-z0-9._-]"
            ));
        }
        if key.is_empty() {
            return Err(format!("{source}: app {id}: the key is empty"));
        }
        if !is_ident(key) {
            return Err(format!(
                "{source}: app {id}: key {key:?} must be 1 to 128 of [A-Za-z0-9._-]"
            ));
        }
        if secret.is_empty() {
            return Err(format!(
                "{source}: app {id}: the secret is empty: anyone could sign subscriptions and API calls"
            ));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{source}: app {id}: the secret contains whitespace or control characters"
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
#[derive(Debug, Default, Clone)]
pub struct Apps(Vec<Arc<App>>);

impl Apps {
    /// Parse every `--pusher-app`; ids and keys must be unique.
    pub fn parse(specs: &[String]) -> Result<Apps, String> {
        let mut apps = Apps::default();
        for s in specs {
            apps.add("--pusher-app", App::parse(s)?)?;
        }
        Ok(apps)
    }

    /// Add an app whose id and key are new.
    fn add(&mut self, source: &str, a: App) -> Result<(), String> {
        if self.by_id(&a.id).is_some() {
            return Err(format!(
                "{source}: app id {} given twice (ids must be unique across --pusher-app and --pusher-apps-file)",
                a.id
            ));
        }
        if self.by_key(&a.key).is_some() {
            return Err(format!(
                "{source}: key {} given twice (keys must be unique across --pusher-app and --pusher-apps-file)",
                a.key
            ));
        }
        self.0.push(Arc::new(a));
        Ok(())
    }

    /// Add the apps of the `--pusher-apps-file` at `path`.
    #[cfg(feature = "daemon")]
    pub fn load_file(&mut self, path: &std::path::Path) -> Result<(), String> {
        let source = format!("--pusher-apps-file {}", path.display());
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{source}: cannot read it: {e}"))?;
        self.add_file(&source, &text)
    }

    /// Add the apps of an apps file's text (see [`AppsFile`]).
    #[cfg(feature = "daemon")]
    pub fn add_file(&mut self, source: &str, text: &str) -> Result<(), String> {
        let file: AppsFile = serde_json::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        if file.apps.is_empty() {
            return Err(format!("{source}: \"apps\" lists no app"));
        }
        for a in file.apps {
            self.add(source, App::new(source, &a.id, &a.key, &a.secret.0)?)?;
        }
        Ok(())
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

/// `--pusher-apps-file`: `{"apps":[{"id":"1","key":"KEY","secret":"SECRET"}]}`,
/// the fields soketi's app files and the Pusher SDKs call them. Any other
/// field is refused, so a misspelt or unsupported one is never silently
/// ignored.
#[cfg(feature = "daemon")]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsFile {
    /// The apps.
    pub apps: Vec<FileApp>,
}

/// One app of an [`AppsFile`].
#[cfg(feature = "daemon")]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApp {
    /// The app id.
    pub id: String,
    /// The key.
    pub key: String,
    /// The secret.
    pub secret: FileSecret,
}

/// A secret read from a file: a JSON string. Its errors never quote the
/// value (serde's own would: ``invalid type: integer `123` ``).
#[cfg(feature = "daemon")]
pub struct FileSecret(String);

#[cfg(feature = "daemon")]
impl<'de> serde::Deserialize<'de> for FileSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(FileSecret(s)),
            _ => Err(serde::de::Error::custom("a secret must be a JSON string")),
        }
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

    #[cfg(feature = "daemon")]
    fn file(flags: &[&str], text: &str) -> Result<Apps, String> {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let mut apps = Apps::parse(&flags)?;
        apps.add_file("--pusher-apps-file f.json", text)?;
        Ok(apps)
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn apps_file_parses() {
        let apps = file(
            &["1:k1:s1"],
            r#"{"apps":[{"id":"2","key":"k2","secret":"s:2"},
                        {"id":"app-3","key":"k3","secret":"s3"}]}"#,
        )
        .unwrap();
        let ids: Vec<&str> = apps.all().iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "app-3"]);
        let a = apps.by_key("k2").unwrap();
        assert_eq!((a.id.as_str(), a.secret.as_slice()), ("2", &b"s:2"[..]));
        assert_eq!(apps.by_id("app-3").unwrap().key, "k3");
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn apps_file_refuses() {
        let ok = r#"{"id":"1","key":"k","secret":"s"}"#;
        for (flags, text, needle) in [
            (&[][..], "", "EOF while parsing"),
            (&[], "{\"apps\":[", "EOF while parsing"),
            (&[], "[]", "expected struct AppsFile"),
            (
                &[],
                "42",
                "invalid type: integer `42`, expected struct AppsFile",
            ),
            (&[], "{}", "missing field `apps`"),
            (&[], r#"{"apps":[]}"#, "lists no app"),
            (
                &[],
                &format!(r#"{{"apps":[{ok}],"x":1}}"#),
                "unknown field `x`",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"k","secret":"s","client_events":true}]}"#,
                "unknown field `client_events`, expected one of `id`, `key`, `secret`",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"k"}]}"#,
                "missing field `secret`",
            ),
            (
                &[],
                r#"{"apps":[{"id":"","key":"k","secret":"s"}]}"#,
                "app id is empty",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"","secret":"s"}]}"#,
                "1: the key is empty",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"k","secret":""}]}"#,
                "1: the secret is empty",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"k y","secret":"s"}]}"#,
                "must be 1 to 128",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"k","secret":"a b"}]}"#,
                "whitespace",
            ),
            (
                &[],
                &format!(r#"{{"apps":[{ok},{ok}]}}"#),
                "app id 1 given twice",
            ),
            (
                &[],
                r#"{"apps":[{"id":"1","key":"k","secret":"s"},{"id":"2","key":"k","secret":"s"}]}"#,
                "key k given twice",
            ),
            (
                &["1:other:s"],
                &format!(r#"{{"apps":[{ok}]}}"#),
                "app id 1 given twice",
            ),
            (
                &["9:k:s"],
                &format!(r#"{{"apps":[{ok}]}}"#),
                "key k given twice",
            ),
        ] {
            let err = file(flags, text)
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(
                err.starts_with("--pusher-apps-file f.json"),
                "{text}: {err}"
            );
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    /// A secret of the wrong type is refused without quoting it.
    #[cfg(feature = "daemon")]
    #[test]
    fn apps_file_errors_never_show_the_secret() {
        for secret in [
            "918273645",
            "[\"hidden-value\"]",
            "{\"v\":\"hidden-value\"}",
            "true",
        ] {
            let text = format!(r#"{{"apps":[{{"id":"1","key":"k","secret":{secret}}}]}}"#);
            let err = file(&[], &text).expect_err("refused");
            assert!(err.contains("a secret must be a JSON string"), "{err}");
            assert!(
                !err.contains("918273645") && !err.contains("hidden-value"),
                "{err}"
            );
        }
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn apps_file_unreadable() {
        let err = Apps::default()
            .load_file(std::path::Path::new("/nonexistent/wspush-apps.json"))
            .unwrap_err();
        assert!(
            err.starts_with("--pusher-apps-file /nonexistent/wspush-apps.json: cannot read it:"),
            "{err}"
        );
    }
}
