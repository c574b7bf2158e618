//! `GET /console`: the operations web console, and `GET /v1/whoami`, which the
//! console (or any client) uses to learn what its key may do.
//!
//! The page, its script and its style sheet are compiled into the binary
//! (`src/api/console/`): nothing is fetched from outside the server, and there
//! is no build step. The assets are public; everything they show comes from the
//! API, called with the operator's own key (kept in the browser's session
//! storage), so the console can do exactly what that key can do.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::access::Caller;
use super::error::ApiError;

/// One embedded file: its name under `/console/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console/console.css"),
    },
];

const PAGE: &str = include_str!("console/index.html");

/// Scripts and styles only from this server, API calls only to it, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

fn embedded(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Served from the binary: a new binary may change them, so revalidate.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[utoipa::path(get, path = "/console", tag = "operations", security(()),
    responses((status = 200, description = "the operations console (HTML; its API calls carry the operator's key)", body = String, content_type = "text/html")))]
pub async fn page() -> HttpResponse {
    embedded("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(get, path = "/console/{asset}", tag = "operations", security(()),
    params(("asset" = String, Path, description = "`console.js` or `console.css`")),
    responses((status = 200, description = "an embedded asset of the console", body = String, content_type = "text/plain"),
        (status = 404, description = "no such asset", body = super::schema::Problem, content_type = "application/problem+json")))]
pub async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .map(|asset| embedded(asset.content_type, asset.body))
        .ok_or_else(|| ApiError::NotFound(format!("the console has no asset {name:?}")))
}

/// What the calling key is: its name (never the secret), role and scope.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's name from config (`-` when the API runs without keys).
    pub key: String,
    /// `admin`, `channel`, `system` or `observer`.
    pub role: String,
    /// `channel` keys: the channel they act for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub channel: Option<String>,
    /// `system` keys: the locations they may touch (empty: none listed).
    pub locations: Vec<String>,
    /// `system` keys: the sources their events may carry (empty: any).
    pub sources: Vec<String>,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "operations",
    responses((status = 200, description = "the calling key's name, role and scope", body = WhoAmI), super::schema::Errors))]
pub async fn whoami(caller: Caller) -> web::Json<WhoAmI> {
    web::Json(WhoAmI {
        key: caller.name.to_string(),
        role: caller.role.as_str().to_string(),
        channel: caller.channel.as_deref().map(str::to_string),
        locations: caller.locations.to_vec(),
        sources: caller.sources.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_assets() {
        for asset in ASSETS {
            assert!(
                PAGE.contains(&format!("/console/{}", asset.name)),
                "{} is not used by the page",
                asset.name
            );
        }
        // Nothing from another origin: no scheme-qualified or protocol-relative URL.
        for text in std::iter::once(PAGE).chain(ASSETS.iter().map(|a| a.body)) {
            // The SVG namespace is a name, not something fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http://", "https://", "src=\"//", "href=\"//"] {
                assert!(!text.contains(needle), "an external reference: {needle}");
            }
        }
    }
}
