#include "fkd/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/core.h>

#include "fkd/error.h"

namespace fkd {

namespace {

/// Text for XML character data and attribute values: markup characters escaped, and the
/// control characters XML 1.0 forbids replaced by spaces.
std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
          out += ' ';
        else
          out += c;
    }
  }
  return out;
}

/// Rough rendered width of `s` in a sans-serif font of size `font_px` (counts UTF-8 code points).
double text_width(const std::string& s, double font_px) {
  size_t chars = 0;
  for (char c : s) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return double(chars) * font_px * 0.6;
}

/// Colour of series i: a ten-colour qualitative palette, then golden-angle hues.
std::string series_color(size_t i) {
  static const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  constexpr size_t kN = sizeof(kPalette) / sizeof(kPalette[0]);
  if (i < kN) return kPalette[i];
  return fmt::format("hsl({:.0f},65%,42%)", std::fmod(double(i - kN) * 137.508 + 20.0, 360.0));
}

/// Formats tick values spaced `step` apart with just enough decimals.
std::string tick_label(double v, double step) {
  const int decimals = step >= 1 ? 0 : int(std::ceil(-std::log10(step) - 1e-9));
  if (decimals > 6 || std::abs(v) >= 1e9) return fmt::format("{:.4g}", v);
  return fmt::format("{:.{}f}", v, decimals);
}

bool finite_point(const PlotSeries& s, size_t i) {
  return std::isfinite(s.x[i]) && std::isfinite(s.y[i]);
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  FKD_CHECK(std::isfinite(lo) && std::isfinite(hi), ConfigError,
            "nice_ticks: range [{}, {}] is not finite", lo, hi);
  if (lo > hi) std::swap(lo, hi);
  target = std::clamp(target, 2, 100);
  if (!(hi - lo > std::abs(lo) * 1e-12)) {  // degenerate: widen around the value
    const double pad = lo != 0 ? std::abs(lo) * 0.1 : 1.0;
    lo -= pad;
    hi += pad;
  }
  FKD_CHECK(std::isfinite(hi - lo), ConfigError, "nice_ticks: range [{}, {}] is too wide", lo, hi);

  // Candidate steps m x 10^k around the raw step; keep the one whose tick count is closest to
  // the target (ties: the smaller step, so the ticks hug the data).
  const double raw = (hi - lo) / double(target - 1);
  const int e = int(std::floor(std::log10(raw)));
  int best_m = 1, best_k = e;
  double best_first = 0, best_count = 0, best_score = HUGE_VAL;
  for (int k = e - 1; k <= e + 1; ++k) {
    for (int m : {1, 2, 5}) {
      const double step = k < 0 ? double(m) / std::pow(10.0, -k) : double(m) * std::pow(10.0, k);
      const double first = std::floor(lo / step + 1e-9);
      const double last = std::ceil(hi / step - 1e-9);
      const double count = std::max(2.0, last - first + 1);
      const double score = std::abs(count - double(target));
      if (score < best_score) {
        best_score = score;
        best_m = m;
        best_k = k;
        best_first = first;
        best_count = count;
      }
    }
  }
  // Each tick is (integer x m) scaled by a power of ten, rounded once: 0.6, not 0.6000000000000001.
  const double scale = std::pow(10.0, std::abs(best_k));
  std::vector<double> ticks;
  ticks.reserve(size_t(best_count));
  for (int i = 0; i < int(best_count); ++i) {
    const double n = (best_first + double(i)) * double(best_m);
    ticks.push_back((best_k < 0 ? n / scale : n * scale) + 0.0);
  }
  return ticks;
}

std::string render_line_plot_svg(const std::vector<PlotSeries>& series, const PlotOptions& opts) {
  double xmin = HUGE_VAL, xmax = -HUGE_VAL, ymin = HUGE_VAL, ymax = -HUGE_VAL;
  for (const PlotSeries& s : series) {
    FKD_CHECK(s.x.size() == s.y.size(), ConfigError,
              "plot: series '{}' has {} x values but {} y values", s.name, s.x.size(), s.y.size());
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!finite_point(s, i)) continue;
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  }
  FKD_CHECK(xmin <= xmax, ConfigError, "plot: none of the {} series has a finite point",
            series.size());

  // Data ranges -> axis ranges (the outer ticks).
  if (xmin >= 0) {
    xmin = 0;
    if (xmax == 0) xmax = 1;
  }
  const std::vector<double> xt = nice_ticks(xmin, xmax);
  const double yspan = ymax - ymin;
  const double ypad = yspan > 0 ? 0.05 * yspan : (ymax != 0 ? 0.05 * std::abs(ymax) : 1.0);
  double ylo = ymin - ypad, yhi = ymax + ypad;
  if (ymin >= 0 && ylo < 0)
    ylo = 0;
  else if (ymax <= 0 && yhi > 0)
    yhi = 0;
  const std::vector<double> yt = nice_ticks(ylo, yhi);
  const double x0 = xt.front(), x1 = xt.back(), y0 = yt.front(), y1 = yt.back();

  // Layout: title on top, y tick labels and label on the left, x ones below, legend right.
  constexpr double kFont = 12, kTitleFont = 15, kLegendRow = 18, kLegendSwatch = 24;
  const double W = opts.width, H = opts.height;
  double tick_w = 0;
  for (size_t i = 0; i < yt.size(); ++i)
    tick_w = std::max(tick_w, text_width(tick_label(yt[i], yt[1] - yt[0]), kFont));
  double name_w = 0;
  for (const PlotSeries& s : series) name_w = std::max(name_w, text_width(s.name, kFont));
  const double legend_w = std::min(kLegendSwatch + 6 + name_w + 12, 0.35 * W);
  const double left = 10 + (opts.y_label.empty() ? 0 : kFont + 8) + tick_w + 8;
  const double right = 12 + legend_w;
  const double top = opts.title.empty() ? 14 : 14 + kTitleFont + 10;
  const double bottom = 8 + kFont + 6 + (opts.x_label.empty() ? 0 : kFont + 10);
  const double pw = W - left - right, ph = H - top - bottom;
  FKD_CHECK(pw >= 40 && ph >= 40, ConfigError,
            "plot: {}x{} pixels leave no room for the plot area (need about {}x{} more)",
            opts.width, opts.height, std::max(0.0, std::ceil(40 - pw)),
            std::max(0.0, std::ceil(40 - ph)));
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + ph - (y - y0) / (y1 - y0) * ph; };

  std::string o;
  o += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"{2}\">\n",
      opts.width, opts.height, kFont);
  if (!opts.title.empty()) o += fmt::format("<title>{}</title>\n", xml_escape(opts.title));
  o += "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!opts.title.empty())
    o += fmt::format(
        "<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\" font-size=\"{}\" "
        "font-weight=\"bold\">{}</text>\n",
        left + pw / 2, 14 + kTitleFont, kTitleFont, xml_escape(opts.title));

  // The plot area, then grid lines at every tick.
  o += fmt::format(
      "<rect class=\"plot-area\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" "
      "fill=\"#fcfcfc\"/>\n",
      left, top, pw, ph);
  o += "<g class=\"grid\" stroke=\"#e6e6e6\" stroke-width=\"1\">\n";
  for (double t : xt)
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\"/>\n", px(t),
                     top, top + ph);
  for (double t : yt)
    o += fmt::format("<line x1=\"{1:.2f}\" y1=\"{0:.2f}\" x2=\"{2:.2f}\" y2=\"{0:.2f}\"/>\n", py(t),
                     left, left + pw);
  o += "</g>\n";

  // Axes (left and bottom edges of the plot area), tick marks and tick labels.
  o += "<g class=\"axes\" stroke=\"#333333\" stroke-width=\"1\" fill=\"none\">\n";
  o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\"/>\n", left,
                   top, top + ph);
  o += fmt::format("<line x1=\"{1:.2f}\" y1=\"{0:.2f}\" x2=\"{2:.2f}\" y2=\"{0:.2f}\"/>\n",
                   top + ph, left, left + pw);
  for (double t : xt)
    o += fmt::format("<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\"/>\n", px(t),
                     top + ph, top + ph + 5);
  for (double t : yt)
    o += fmt::format("<line x1=\"{1:.2f}\" y1=\"{0:.2f}\" x2=\"{2:.2f}\" y2=\"{0:.2f}\"/>\n", py(t),
                     left - 5, left);
  o += "</g>\n";
  o += "<g class=\"tick-labels\" fill=\"#333333\">\n";
  for (double t : xt)
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n", px(t),
                     top + ph + 6 + kFont, tick_label(t, xt[1] - xt[0]));
  for (double t : yt)
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"end\">{}</text>\n", left - 8,
                     py(t) + kFont * 0.35, tick_label(t, yt[1] - yt[0]));
  o += "</g>\n";
  if (!opts.x_label.empty())
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" text-anchor=\"middle\">{}</text>\n",
                     left + pw / 2, H - 8, xml_escape(opts.x_label));
  if (!opts.y_label.empty()) {
    const double lx = 10 + kFont, ly = top + ph / 2;
    o += fmt::format(
        "<text x=\"{0:.2f}\" y=\"{1:.2f}\" text-anchor=\"middle\" "
        "transform=\"rotate(-90 {0:.2f} {1:.2f})\">{2}</text>\n",
        lx, ly, xml_escape(opts.y_label));
  }

  // One group per series: the line through its points in input order, then a marker on each.
  for (size_t si = 0; si < series.size(); ++si) {
    const PlotSeries& s = series[si];
    const std::string color = series_color(si);
    o += fmt::format("<g class=\"series\" stroke=\"{0}\" fill=\"{0}\">\n", color);
    o += "<polyline fill=\"none\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"";
    bool first = true;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!finite_point(s, i)) continue;
      o += fmt::format("{}{:.2f},{:.2f}", first ? "" : " ", px(s.x[i]), py(s.y[i]));
      first = false;
    }
    o += "\"/>\n";
    for (size_t i = 0; i < s.x.size(); ++i)
      if (finite_point(s, i))
        o += fmt::format("<circle cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"3\"/>\n", px(s.x[i]), py(s.y[i]));
    o += "</g>\n";
  }

  // Legend, right of the plot area.
  o += "<g class=\"legend\">\n";
  const double lx = left + pw + 12;
  for (size_t si = 0; si < series.size(); ++si) {
    const double ly = top + 8 + double(si) * kLegendRow;
    const std::string color = series_color(si);
    o += fmt::format(
        "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{2:.2f}\" y2=\"{1:.2f}\" stroke=\"{3}\" "
        "stroke-width=\"2\"/>\n",
        lx, ly, lx + kLegendSwatch, color);
    o += fmt::format("<circle cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"3\" fill=\"{}\"/>\n",
                     lx + kLegendSwatch / 2, ly, color);
    o += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" fill=\"#333333\">{}</text>\n",
                     lx + kLegendSwatch + 6, ly + kFont * 0.35, xml_escape(series[si].name));
  }
  o += "</g>\n</svg>\n";
  return o;
}

}  // namespace fkd
