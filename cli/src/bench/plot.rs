//! `--plot`: an SVG chart of throughput and latency percentiles, dashi next to
//! its peers.

use std::path::Path;

use plotters::prelude::*;

use super::Report;

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Fails when the chart could not be written to `path`, before the runs
/// (a full run, then "No such file or directory", lost the user's time).
/// Leaves no file behind.
pub(crate) fn check_writable(path: &Path) -> Result<(), String> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("--plot {}: cannot write there: {e}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

pub(crate) fn write(path: &Path, dashi: &Report, peers: &[Report]) -> Result<(), String> {
    draw(path, dashi, peers).map_err(|e| format!("writing chart {}: {e}", path.display()))
}

fn draw(path: &Path, dashi: &Report, peers: &[Report]) -> Result<(), Box<dyn std::error::Error>> {
    let runs: Vec<&Report> = std::iter::once(dashi).chain(peers).collect();
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);

    let top = runs.iter().map(|r| r.msgs_per_sec()).fold(1.0, f64::max) * 1.15;
    let n = runs.len() as f64;
    let mut bars = ChartBuilder::on(&left)
        .caption("Throughput (messages/s)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n, 0f64..top)?;
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(runs.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            let centre = (x - x.floor() - 0.5).abs() < 0.01;
            match runs.get(i) {
                Some(r) if centre => r.transport.clone(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|y| format!("{:.1}M", y / 1e6))
        .draw()?;
    bars.draw_series(runs.iter().enumerate().map(|(i, r)| {
        let x = i as f64;
        Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, r.msgs_per_sec())],
            COLORS[i % COLORS.len()].filled(),
        )
    }))?;

    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    let worst = runs.iter().flat_map(|r| r.latency_us).fold(10.0, f64::max) * 30.0;
    let mut lat = ChartBuilder::on(&right)
        .caption("Publish → deliver latency (µs, log)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2f64..4.2f64, (1f64..worst).log_scale())?;
    lat.configure_mesh()
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(5)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..=4.0).contains(&i) {
                labels[i as usize].to_owned()
            } else {
                String::new()
            }
        })
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        lat.draw_series(LineSeries::new(
            r.latency_us
                .iter()
                .enumerate()
                .map(|(k, v)| (k as f64, v.max(1.0))),
            color.stroke_width(2),
        ))?
        .label(r.transport.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    lat.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
