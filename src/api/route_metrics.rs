//! The HTTP metrics of each route, resolved once: recording a request takes
//! no label formatting, hashing or allocation (`match_pattern()` built a
//! `String` and `with_label_values` hashed three labels on every request).

use std::sync::OnceLock;

use actix_web::http::{Method, StatusCode};
use prometheus::{Histogram, IntCounter};

use super::ROUTES;
use crate::metrics::Metrics;

/// Statuses the API answers, each with a counter slot per route; any other
/// status is counted through the labelled vector, as before.
const STATUSES: [u16; 19] = [
    200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 406, 409, 411, 413, 415, 422, 429, 500, 503,
];

/// One route's handles for requests with the route's own method.
struct Handles {
    duration: OnceLock<Histogram>,
    /// Created on first use, so a status never answered shows no series.
    requests: [OnceLock<IntCounter>; STATUSES.len()],
}

pub struct RouteMetrics {
    handles: Vec<Handles>,
}

impl RouteMetrics {
    pub fn new() -> RouteMetrics {
        let handles = ROUTES
            .iter()
            .map(|_| Handles {
                duration: OnceLock::new(),
                requests: std::array::from_fn(|_| OnceLock::new()),
            })
            .collect();
        RouteMetrics { handles }
    }

    /// Records one request: `route` is the index in [`ROUTES`] of the pattern
    /// it matched (its label), `None` for the label `unmatched`.
    pub fn record(
        &self,
        metrics: &Metrics,
        route: Option<usize>,
        method: &Method,
        status: StatusCode,
        seconds: f64,
    ) {
        let label = route.map_or("unmatched", |index| ROUTES[index].path);
        let (method, code) = (method.as_str(), status.as_str());
        let requests = || {
            metrics
                .http_requests_total
                .with_label_values(&[label, method, code])
        };
        let duration = || {
            metrics
                .http_request_duration_seconds
                .with_label_values(&[label, method])
        };
        // Only a route's own method has handles: another is a 404 or 405.
        let handles = route
            .filter(|&index| ROUTES[index].method.eq_ignore_ascii_case(method))
            .map(|index| &self.handles[index]);
        let Some(handles) = handles else {
            requests().inc();
            duration().observe(seconds);
            return;
        };
        handles.duration.get_or_init(duration).observe(seconds);
        match STATUSES.iter().position(|&s| s == status.as_u16()) {
            Some(slot) => handles.requests[slot].get_or_init(requests).inc(),
            None => requests().inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = metrics.render();
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .find(|line| {
                labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn handles_count_under_the_same_labels_as_the_vectors() {
        let metrics = Metrics::new();
        let routes = RouteMetrics::new();
        let reserve = ROUTES
            .iter()
            .position(|r| r.path == "/v1/reservations")
            .unwrap();
        let reserve =
            |method: Method, status| routes.record(&metrics, Some(reserve), &method, status, 0.001);
        reserve(Method::POST, StatusCode::CREATED);
        reserve(Method::POST, StatusCode::CREATED);
        // Not in the slots, not the route's method, no route: the vectors.
        reserve(Method::POST, StatusCode::IM_A_TEAPOT);
        reserve(Method::GET, StatusCode::METHOD_NOT_ALLOWED);
        routes.record(&metrics, None, &Method::GET, StatusCode::NOT_FOUND, 0.001);
        let count = |method, status| {
            sample(
                &metrics,
                "stockwire_http_requests_total",
                &[
                    ("route", "/v1/reservations"),
                    ("method", method),
                    ("status", status),
                ],
            )
        };
        assert_eq!(count("POST", "201"), Some(2.0));
        assert_eq!(count("POST", "418"), Some(1.0));
        assert_eq!(count("GET", "405"), Some(1.0));
        assert_eq!(
            count("POST", "400"),
            None,
            "a status never answered has no series"
        );
        let duration = |route| {
            sample(
                &metrics,
                "stockwire_http_request_duration_seconds_count",
                &[("route", route), ("method", "POST")],
            )
        };
        assert_eq!(
            duration("/v1/transfers"),
            None,
            "a route never called has no series"
        );
        assert_eq!(
            sample(
                &metrics,
                "stockwire_http_requests_total",
                &[("route", "unmatched"), ("method", "GET"), ("status", "404")],
            ),
            Some(1.0)
        );
        assert_eq!(duration("/v1/reservations"), Some(3.0));
    }
}
