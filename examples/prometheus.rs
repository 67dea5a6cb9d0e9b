//! Prometheus metrics for an app that uses async-op: the library records
//! through the `metrics` facade; this installs the Prometheus recorder and
//! serves its text format at `GET /metrics`.

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder for the whole process (once).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// Registers `GET /metrics`, rendering what `handle` has recorded.
pub fn configure(handle: PrometheusHandle) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        config.app_data(web::Data::new(handle)).route(
            "/metrics",
            web::get().to(|handle: web::Data<PrometheusHandle>| async move {
                HttpResponse::Ok()
                    .content_type("text/plain; version=0.0.4")
                    .body(handle.render())
            }),
        );
    }
}
