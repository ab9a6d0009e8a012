//! Property: whatever scopes and extra parameters a caller gives, the token
//! endpoint receives exactly those values, each parameter once.

mod support;

use proptest::prelude::*;
use support::recorder::{Recorder, Reply};
use tower_oauth2::{AuthMethod, ClientCredentials, TokenSource};

/// Scope tokens as RFC 6749 §3.3 allows them: printable ASCII but `"` and `\`.
fn scope_token() -> impl Strategy<Value = String> {
    "[!#-\\[\\]-~]{1,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_server_decodes_exactly_what_was_given(
        scopes in prop::collection::vec(scope_token(), 1..4),
        value in "\\PC{0,24}",
        secret in "[ -~]{1,16}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let server = Recorder::start().await;
            server.reply([Reply::token("t")]);
            let mut grant = ClientCredentials::builder()
                .token_url(server.url("/token"))
                .client_id("id")
                .client_secret(secret.clone())
                .auth_method(AuthMethod::ClientSecretPost)
                .scopes(&scopes)
                .param("extra", value.clone())
                .build()
                .unwrap();
            grant.fetch().await.unwrap();
            let sent = server.last();
            prop_assert_eq!(sent.param("scope"), scopes.join(" "));
            prop_assert_eq!(sent.param("extra"), value.clone());
            prop_assert_eq!(sent.param("client_secret"), secret.clone());
            prop_assert_eq!(sent.param("grant_type"), "client_credentials");
            prop_assert_eq!(sent.form().len(), 5, "no parameter added or repeated");
            prop_assert_eq!(sent.query, None);
            Ok(())
        })?;
    }
}
