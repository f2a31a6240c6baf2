// Report charts (plot.h): nice axis ticks on many ranges, the SVG line chart's structure,
// geometry and escaping (and that a real XML parser accepts it), and its errors.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "fkd/dataset.h"
#include "fkd/error.h"
#include "fkd/image.h"
#include "fkd/inspect.h"
#include "fkd/plot.h"
#include "fkd/progress.h"
#include "fkd/store.h"
#include "fkd/transforms.h"
#include "testutil.h"

namespace fkd {
namespace {

// --- helpers ---------------------------------------------------------------------------

size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

/// The step of a tick list, checking it is one of 1, 2, 5 x 10^k and evenly applied.
double checked_step(const std::vector<double>& t) {
  EXPECT_GE(t.size(), 2u);
  if (t.size() < 2) return 0;
  const double step = t[1] - t[0];
  EXPECT_GT(step, 0);
  const double k = std::floor(std::log10(step) + 1e-9);
  const double mantissa = step / std::pow(10.0, k);
  const bool nice = std::abs(mantissa - 1) < 1e-6 || std::abs(mantissa - 2) < 1e-6 ||
                    std::abs(mantissa - 5) < 1e-6;
  EXPECT_TRUE(nice) << "step " << step << " mantissa " << mantissa;
  for (size_t i = 1; i < t.size(); ++i) {
    EXPECT_NEAR(t[i] - t[i - 1], step, step * 1e-9) << "tick " << i;
    // Every tick is a multiple of the step.
    EXPECT_NEAR(t[i] / step, std::round(t[i] / step), 1e-6) << "tick " << t[i];
  }
  return step;
}

void expect_covers(const std::vector<double>& t, double lo, double hi) {
  ASSERT_FALSE(t.empty());
  const double tol = 1e-9 * std::max({1.0, std::abs(lo), std::abs(hi)});
  EXPECT_LE(t.front(), std::min(lo, hi) + tol);
  EXPECT_GE(t.back(), std::max(lo, hi) - tol);
}

struct Rect {
  double x, y, w, h;
};

double attr(const std::string& element, const std::string& name) {
  const std::regex re(" " + name + "=\"([-0-9.eE]+)\"");
  std::smatch m;
  if (!std::regex_search(element, m, re)) {
    ADD_FAILURE() << "no numeric attribute " << name << " in " << element;
    return 0;
  }
  return std::stod(m[1].str());
}

Rect plot_area(const std::string& svg) {
  const std::regex re("<rect class=\"plot-area\"[^>]*>");
  std::smatch m;
  if (!std::regex_search(svg, m, re)) {
    ADD_FAILURE() << "no plot-area rect";
    return {0, 0, 0, 0};
  }
  const std::string e = m[0].str();
  return {attr(e, "x"), attr(e, "y"), attr(e, "width"), attr(e, "height")};
}

/// The point lists of every <polyline>, in document order.
std::vector<std::vector<std::pair<double, double>>> polylines(const std::string& svg) {
  std::vector<std::vector<std::pair<double, double>>> out;
  const std::regex re("<polyline[^>]* points=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator();
       ++it) {
    std::vector<std::pair<double, double>> pts;
    const std::string s = (*it)[1].str();
    const std::regex pt("(-?[0-9.]+),(-?[0-9.]+)");
    for (auto p = std::sregex_iterator(s.begin(), s.end(), pt); p != std::sregex_iterator(); ++p)
      pts.push_back({std::stod((*p)[1].str()), std::stod((*p)[2].str())});
    out.push_back(pts);
  }
  return out;
}

std::vector<PlotSeries> accuracy_runs() {
  return {{"teacher", {0, 30, 61, 95, 130}, {71.2, 84.5, 88.9, 90.7, 92.1}},
          {"student (KD)", {0, 12, 25, 37, 50}, {68.0, 80.3, 85.1, 87.3, 88.4}},
          {"student (FKD)", {0, 8, 16, 24, 33}, {69.5, 81.0, 86.2, 88.0, 89.9}}};
}

PlotOptions accuracy_options() {
  PlotOptions o;
  o.title = "Test accuracy vs wall-clock time";
  o.x_label = "wall-clock time (s)";
  o.y_label = "test accuracy (%)";
  return o;
}

// --- nice_ticks ------------------------------------------------------------------------

TEST(NiceTicks, ZeroToOneInFifths) {
  const std::vector<double> t = nice_ticks(0, 1);
  ASSERT_EQ(t.size(), 6u);
  for (size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t[i], 0.2 * double(i), 1e-12);
  // Ticks are the correctly rounded decimals, not accumulated sums (0.6, not 0.6000000000000001).
  EXPECT_EQ(t[3], 0.6);
  EXPECT_EQ(t[5], 1.0);
  EXPECT_EQ(t[0], 0.0);
  EXPECT_FALSE(std::signbit(t[0]));
}

TEST(NiceTicks, AccuracyRangeStepsOfOneOrHalf) {
  const std::vector<double> t = nice_ticks(87.3, 92.1);
  const double step = checked_step(t);
  EXPECT_TRUE(std::abs(step - 1) < 1e-12 || std::abs(step - 0.5) < 1e-12) << step;
  expect_covers(t, 87.3, 92.1);
  // Hugs the data: no more than one step of slack at either end.
  EXPECT_GT(t.front(), 87.3 - step - 1e-9);
  EXPECT_LT(t.back(), 92.1 + step + 1e-9);
}

TEST(NiceTicks, KnownRanges) {
  struct Case {
    double lo, hi;
    int target;
    double step;
  };
  const Case cases[] = {{0, 100, 6, 20}, {0, 10, 6, 2},    {0, 130, 6, 20},
                        {-1, 1, 5, 0.5}, {0, 1e6, 6, 2e5}, {0.001, 0.0052, 6, 0.001},
                        {0, 1, 11, 0.1}, {0, 1, 3, 0.5},   {-250, -10, 6, 50}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "[" << c.lo << ", " << c.hi << "] target " << c.target);
    const std::vector<double> t = nice_ticks(c.lo, c.hi, c.target);
    EXPECT_NEAR(checked_step(t), c.step, c.step * 1e-9);
    expect_covers(t, c.lo, c.hi);
  }
}

TEST(NiceTicks, PropertiesOnRandomRanges) {
  std::mt19937_64 rng(1234);
  std::uniform_real_distribution<double> mag(-6, 6), unit(-1, 1);
  std::uniform_int_distribution<int> targets(2, 12);
  for (int trial = 0; trial < 2000; ++trial) {
    const double scale = std::pow(10.0, mag(rng));
    const double a = unit(rng) * scale, b = a + std::abs(unit(rng)) * scale + scale * 1e-3;
    const int target = targets(rng);
    SCOPED_TRACE(testing::Message() << "[" << a << ", " << b << "] target " << target);
    const std::vector<double> t = nice_ticks(a, b, target);
    checked_step(t);
    expect_covers(t, a, b);
    EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
    // About `target` ticks: the chosen step is within a 1-2-5 factor of the ideal one.
    EXPECT_GE(int(t.size()), std::max(2, target / 3)) << t.size();
    EXPECT_LE(int(t.size()), 2 * target + 3) << t.size();
    if (HasFailure()) break;
  }
}

TEST(NiceTicks, ReversedRangeIsSwapped) {
  EXPECT_EQ(nice_ticks(92.1, 87.3), nice_ticks(87.3, 92.1));
}

TEST(NiceTicks, DegenerateRangeGivesAtLeastTwoTicks) {
  for (double v : {0.0, 1.0, 90.0, -3.5, 1e-7, 12345.678}) {
    SCOPED_TRACE(v);
    const std::vector<double> t = nice_ticks(v, v);
    ASSERT_GE(t.size(), 2u);
    checked_step(t);
    expect_covers(t, v, v);
    EXPECT_LT(t.front(), t.back());
  }
}

TEST(NiceTicks, TargetIsClamped) {
  EXPECT_GE(nice_ticks(0, 1, 0).size(), 2u);
  EXPECT_GE(nice_ticks(0, 1, -5).size(), 2u);
  EXPECT_LE(nice_ticks(0, 1, 1000000).size(), 250u);
}

TEST(NiceTicks, NonFiniteIsConfigError) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(nice_ticks(0, inf), ConfigError);
  EXPECT_THROW(nice_ticks(nan, 1), ConfigError);
  EXPECT_THROW(nice_ticks(-1e308, 1e308), ConfigError);  // the span overflows
}

// --- render_line_plot_svg ----------------------------------------------------------------

TEST(LinePlotSvg, Structure) {
  const std::vector<PlotSeries> runs = accuracy_runs();
  const std::string svg = render_line_plot_svg(runs, accuracy_options());
  ASSERT_EQ(svg.rfind("<svg", 0), 0u) << svg.substr(0, 80);
  ASSERT_GE(svg.size(), 7u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(count_of(svg, "<svg"), 1u);
  EXPECT_EQ(count_of(svg, "</svg>"), 1u);
  EXPECT_NE(svg.find("xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("width=\"720\" height=\"440\""), std::string::npos);
  EXPECT_EQ(count_of(svg, "<polyline"), runs.size());
  // One marker per point, plus one legend marker per series.
  EXPECT_EQ(count_of(svg, "<circle"), 15u + runs.size());
  EXPECT_EQ(count_of(svg, "<g"), count_of(svg, "</g>"));
  EXPECT_EQ(count_of(svg, "<text"), count_of(svg, "</text>"));
  for (const PlotSeries& s : runs) EXPECT_NE(svg.find(">" + s.name + "</text>"), std::string::npos);
  EXPECT_NE(svg.find("Test accuracy vs wall-clock time"), std::string::npos);
  EXPECT_NE(svg.find("wall-clock time (s)"), std::string::npos);
  EXPECT_NE(svg.find("rotate(-90"), std::string::npos);
  // Tick labels of the y axis fitted to the data (68..92.1) and of the x axis from 0.
  EXPECT_NE(svg.find(">90</text>"), std::string::npos);
  EXPECT_NE(svg.find(">70</text>"), std::string::npos);
  EXPECT_NE(svg.find(">0</text>"), std::string::npos);    // x starts at 0
  EXPECT_NE(svg.find(">140</text>"), std::string::npos);  // x covers 130
  // The same input renders the same bytes.
  EXPECT_EQ(svg, render_line_plot_svg(runs, accuracy_options()));
}

TEST(LinePlotSvg, TextIsEscaped) {
  PlotOptions o;
  o.title = "runs \"A\" & 'B'";
  o.x_label = "t <s>";
  o.y_label = "acc\x01%";
  const std::string svg =
      render_line_plot_svg({{"a<b & c", {0, 1, 2}, {1, 2, 3}}, {"x>y", {0, 1}, {3, 2}}}, o);
  EXPECT_NE(svg.find("a&lt;b &amp; c"), std::string::npos);
  EXPECT_NE(svg.find("x&gt;y"), std::string::npos);
  EXPECT_NE(svg.find("runs &quot;A&quot; &amp; &apos;B&apos;"), std::string::npos);
  EXPECT_NE(svg.find("t &lt;s&gt;"), std::string::npos);
  EXPECT_NE(svg.find("acc %"), std::string::npos);
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  EXPECT_EQ(svg.find("& c"), std::string::npos);
  EXPECT_EQ(svg.find("<s>"), std::string::npos);
  EXPECT_EQ(svg.find('\x01'), std::string::npos);
}

TEST(LinePlotSvg, PointsLieInsidePlotAreaAndFollowTheData) {
  const std::vector<PlotSeries> runs = accuracy_runs();
  const std::string svg = render_line_plot_svg(runs, accuracy_options());
  const Rect a = plot_area(svg);
  ASSERT_GT(a.w, 100);
  ASSERT_GT(a.h, 100);
  EXPECT_GE(a.x, 0);
  EXPECT_GE(a.y, 0);
  EXPECT_LE(a.x + a.w, 720);
  EXPECT_LE(a.y + a.h, 440);
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), runs.size());
  double lowest = 1e9, highest = -1e9;
  for (size_t s = 0; s < lines.size(); ++s) {
    SCOPED_TRACE(runs[s].name);
    ASSERT_EQ(lines[s].size(), runs[s].x.size());
    for (size_t i = 0; i < lines[s].size(); ++i) {
      const auto [px, py] = lines[s][i];
      EXPECT_GE(px, a.x - 0.01);
      EXPECT_LE(px, a.x + a.w + 0.01);
      EXPECT_GE(py, a.y - 0.01);
      EXPECT_LE(py, a.y + a.h + 0.01);
      lowest = std::min(lowest, py);
      highest = std::max(highest, py);
      if (i > 0) {
        EXPECT_GT(px, lines[s][i - 1].first);   // x increases, so does the pixel x
        EXPECT_LT(py, lines[s][i - 1].second);  // accuracy increases: higher up (smaller y)
      }
    }
    // Every series starts at x = 0, on the left edge.
    EXPECT_NEAR(lines[s][0].first, a.x, 0.01);
  }
  // The y axis is fitted to the data, not forced to 0: the data spans most of the height.
  EXPECT_GT(highest - lowest, 0.6 * a.h);
  // Pixel x is proportional to x across series: 130 s lands at 130/140 of the width (ticks 0..140).
  EXPECT_NEAR(lines[0].back().first, a.x + a.w * 130.0 / 140.0, 0.02);
  EXPECT_NEAR(lines[1].back().first, a.x + a.w * 50.0 / 140.0, 0.02);
}

TEST(LinePlotSvg, XAxisStartsAtZeroYAxisDoesNot) {
  // x in [10, 30] -> the axis starts at 0; y in [900, 910] -> the axis starts near 900.
  const std::string svg =
      render_line_plot_svg({{"r", {10, 20, 30}, {900, 905, 910}}}, PlotOptions{});
  const Rect a = plot_area(svg);
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].size(), 3u);
  EXPECT_NEAR(lines[0][0].first, a.x + a.w / 3, 0.02);
  EXPECT_NEAR(lines[0][2].first, a.x + a.w, 0.02);
  EXPECT_GT(lines[0][0].second, a.y + 0.6 * a.h);  // lowest point near the bottom
  EXPECT_LT(lines[0][2].second, a.y + 0.4 * a.h);  // highest near the top
  EXPECT_NE(svg.find(">0</text>"), std::string::npos);
  EXPECT_NE(svg.find(">900</text>"), std::string::npos);

  // Negative x: the axis is fitted on both sides, not anchored at 0.
  const std::string neg = render_line_plot_svg({{"n", {-5, -3, -1}, {1, 2, 3}}}, PlotOptions{});
  const Rect b = plot_area(neg);
  const auto nl = polylines(neg);
  ASSERT_EQ(nl.size(), 1u);
  EXPECT_NEAR(nl[0][0].first, b.x, 0.02);
  EXPECT_NEAR(nl[0][2].first, b.x + b.w, 0.02);
}

TEST(LinePlotSvg, NonMonotonicInputKeepsItsOrder) {
  const std::string svg = render_line_plot_svg({{"z", {0, 2, 1}, {0, 1, 2}}}, PlotOptions{});
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].size(), 3u);
  EXPECT_LT(lines[0][0].first, lines[0][2].first);
  EXPECT_LT(lines[0][2].first, lines[0][1].first);
}

TEST(LinePlotSvg, DistinctColoursForManySeries) {
  std::vector<PlotSeries> many;
  for (int i = 0; i < 14; ++i)
    many.push_back({"run " + std::to_string(i), {0, 1, 2}, {double(i), double(i) + 1, double(i)}});
  const std::string svg = render_line_plot_svg(many, PlotOptions{});
  const std::regex re("<g class=\"series\" stroke=\"([^\"]+)\"");
  std::vector<std::string> colours;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator();
       ++it)
    colours.push_back((*it)[1].str());
  ASSERT_EQ(colours.size(), many.size());
  EXPECT_EQ(std::set<std::string>(colours.begin(), colours.end()).size(), many.size());
  EXPECT_EQ(count_of(svg, "<polyline"), many.size());
}

TEST(LinePlotSvg, NonFinitePointsAreSkipped) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::string svg =
      render_line_plot_svg({{"r", {0, 1, 2, 3}, {50, nan, 60, 70}}}, PlotOptions{});
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].size(), 3u);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
}

TEST(LinePlotSvg, SinglePointAndFlatSeries) {
  // One point, and every y equal: ranges are widened rather than divided by zero.
  for (const PlotSeries& s : {PlotSeries{"one", {0}, {42}}, PlotSeries{"flat", {0, 5}, {0, 0}},
                              PlotSeries{"same-x", {3, 3}, {1, 2}}}) {
    SCOPED_TRACE(s.name);
    const std::string svg = render_line_plot_svg({s}, PlotOptions{});
    const Rect a = plot_area(svg);
    const auto lines = polylines(svg);
    ASSERT_EQ(lines.size(), 1u);
    ASSERT_EQ(lines[0].size(), s.x.size());
    for (const auto& [px, py] : lines[0]) {
      EXPECT_TRUE(std::isfinite(px) && std::isfinite(py));
      EXPECT_GE(px, a.x - 0.01);
      EXPECT_LE(px, a.x + a.w + 0.01);
      EXPECT_GE(py, a.y - 0.01);
      EXPECT_LE(py, a.y + a.h + 0.01);
    }
  }
}

TEST(LinePlotSvg, EmptySeriesStillGetsAPolylineAndLegend) {
  const std::string svg =
      render_line_plot_svg({{"has data", {0, 1}, {1, 2}}, {"no data yet", {}, {}}}, PlotOptions{});
  EXPECT_EQ(count_of(svg, "<polyline"), 2u);
  EXPECT_NE(svg.find("no data yet"), std::string::npos);
}

TEST(LinePlotSvg, Errors) {
  EXPECT_THROW(render_line_plot_svg({}, PlotOptions{}), ConfigError);
  EXPECT_THROW(render_line_plot_svg({{"e", {}, {}}}, PlotOptions{}), ConfigError);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(render_line_plot_svg({{"n", {nan}, {1}}}, PlotOptions{}), ConfigError);
  try {
    render_line_plot_svg({{"ok", {0, 1}, {0, 1}}, {"bad run", {0, 1, 2}, {0, 1}}}, PlotOptions{});
    FAIL() << "no error on mismatched lengths";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad run"), std::string::npos) << msg;
    EXPECT_NE(msg.find('3'), std::string::npos) << msg;
    EXPECT_NE(msg.find('2'), std::string::npos) << msg;
  }
  PlotOptions tiny;
  tiny.width = 60;
  tiny.height = 40;
  EXPECT_THROW(render_line_plot_svg({{"ok", {0, 1}, {0, 1}}}, tiny), ConfigError);
}

TEST(LinePlotSvg, PythonXmlParserAcceptsIt) {
  test::TempDir dir;
  const std::string path = dir.file("accuracy.svg");
  std::vector<PlotSeries> runs = accuracy_runs();
  runs.push_back({"a<b & c \"q\" 'r' \x02 \xc3\xa9t\xc3\xa9", {0, 40}, {50, 60}});
  PlotOptions o = accuracy_options();
  o.title = "<accuracy> & \"time\"";
  test::write_file(path, render_line_plot_svg(runs, o));
  const std::string script =
      "import sys, xml.etree.ElementTree as ET\n"
      "ns = '{http://www.w3.org/2000/svg}'\n"
      "root = ET.parse(sys.argv[1]).getroot()\n"
      "assert root.tag == ns + 'svg', root.tag\n"
      "lines = root.findall('.//' + ns + 'polyline')\n"
      "assert len(lines) == 4, len(lines)\n"
      "texts = [t.text for t in root.iter(ns + 'text')]\n"
      "assert 'a<b & c \"q\" \\'r\\'   \\u00e9t\\u00e9' in texts, texts\n"
      "assert '<accuracy> & \"time\"' in texts, texts\n"
      "w, h = float(root.get('width')), float(root.get('height'))\n"
      "for l in lines:\n"
      "    for p in l.get('points').split():\n"
      "        x, y = map(float, p.split(','))\n"
      "        assert 0 <= x <= w and 0 <= y <= h, p\n";
  const std::string script_path = dir.file("check_svg.py");
  test::write_file(script_path, script);
  const std::string cmd =
      std::string(FKD_PYTHON) + " -c \"$(cat '" + script_path + "')\" '" + path + "'";
  const int status = std::system(cmd.c_str());
  ASSERT_NE(status, -1);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "python3 rejected " << path << " (see stderr above)";
}

// --- progress ------------------------------------------------------------------------

TEST(Progress, NoEstimateBeforeThereIsARateToBaseItOn) {
  // Right after the start, the time since construction holds only start-up: an estimate
  // from it once read "23h16m". Nothing is estimated until the rate since the first unit
  // has run for a second over two advances.
  setenv("FKD_PROGRESS", "off", 1);
  Progress p("work", 1000, "img");
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(p.eta_seconds(t0), -1);
  p.advance(10);
  EXPECT_EQ(p.eta_seconds(t0 + std::chrono::seconds(5)), -1);  // one advance: no rate
  p.advance(10);
  EXPECT_EQ(p.eta_seconds(std::chrono::steady_clock::now()), -1);  // not a second yet
  // 10 units over the 2 s since the first advance: 980 left take 196 s.
  const double eta = p.eta_seconds(t0 + std::chrono::seconds(2));
  EXPECT_NEAR(eta, 196.0, 1.0);
  EXPECT_EQ(format_duration(-1), "?");
  unsetenv("FKD_PROGRESS");
}
TEST(Progress, NoRateFromATimeTooShortToMeasureIt) {
  // Work done right after the bar started (a store verified before the first line) once
  // printed "229902675 img/s": a rate is given only from kMinRateSeconds on.
  setenv("FKD_PROGRESS", "plain", 1);
  testing::internal::CaptureStderr();
  {
    Progress p("verify", 230, "img");
    p.advance(230);
  }
  const std::string out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "verify 100% (230/230) ? img/s ETA ?\n");
  setenv("FKD_PROGRESS", "off", 1);
  Progress q("work", 100, "img");
  const auto start = std::chrono::steady_clock::now();
  q.advance(50);
  EXPECT_EQ(q.rate(start), -1);
  EXPECT_NEAR(q.rate(start + std::chrono::seconds(10)), 5.0, 0.01);
  unsetenv("FKD_PROGRESS");
}

// --- fkd inspect --render -----------------------------------------------------------------

/// A small ImageFolder of `count` 32x32 PPM images in two classes named `classes`, none of
/// whose pixels is black or red, and a store of one derived RandomCrop(32, padding 8) crop per
/// image (crops reach up to 8 px past the image).
struct RenderFixture {
  test::TempDir dir;
  std::string data, store;
  RenderFixture(const std::array<std::string, 2>& classes, int count) {
    data = dir.file("data");
    for (const char* split : {"train", "val"}) {
      for (int c = 0; c < 2; ++c) {
        const std::string folder = data + "/" + split + "/" + classes[size_t(c)];
        std::filesystem::create_directories(folder);
        for (int k = 0; k < count / 2; ++k) {
          std::string ppm = "P6\n32 32\n255\n";
          for (int p = 0; p < 32 * 32; ++p) {
            ppm += char(60 + (p * 7 + k) % 120);
            ppm += char(60 + (p * 3 + c * 40) % 120);
            ppm += char(60 + (p + k * 11) % 120);
          }
          test::write_file(folder + "/img" + std::to_string(k) + ".ppm", ppm);
        }
      }
    }
    const auto ds = open_dataset(data, Split::kTrain);
    Manifest m;
    m.num_images = ds->size();
    m.dataset_fingerprint = dataset_fingerprint(*ds);
    m.classes = ds->classes();
    m.dataset = data;
    m.teacher = "teacher.pt";
    m.teacher_hash = "00112233445566778899aabbccddeeff";
    m.label_type = LabelType::kMarginalSmoothing;
    m.k = 2;
    m.precision = Precision::kFp32;
    m.crops_per_image = 1;
    m.seed = 3;
    m.crop = {CropKind::kPadded, 32, {0.08f, 1.0f}, {3.f / 4.f, 4.f / 3.f}, 8, 0.5f};
    m.mean = {0.5f, 0.5f, 0.5f};
    m.std = {0.25f, 0.25f, 0.25f};
    store = dir.file("store");
    std::filesystem::create_directories(store);
    ShardWriter w(store, m, 0);
    for (uint64_t i = 0; i < m.num_images; ++i) {
      ImageLabels l;
      l.height = l.width = 32;
      l.num_crops = 1;
      l.crop_hash = label_crop_hash(m, i, 32, 32);
      const float probs[2] = {0.75f, 0.25f};
      l.indices.resize(2);
      l.values.resize(2);
      quantize_crop(probs, 2, m.label_type, m.k, l.indices.data(), l.values.data());
      w.append(i, l);
    }
    w.finish();
    write_manifest(store, m);
  }
  /// The PNG of image `i`, decoded.
  Image render(uint64_t i) const {
    const StoreReader r(store);
    const auto ds = open_dataset(data, Split::kTrain);
    const std::string png = dir.file("render-" + std::to_string(i) + ".png");
    render_image_crops(r, *ds, i, png);
    return read_image(png, 3);
  }
};

bool is(const Image& img, int x, int y, uint8_t r, uint8_t g, uint8_t b) {
  const uint8_t* p = img.row(y) + size_t(x) * 3;
  return p[0] == r && p[1] == g && p[2] == b;
}

TEST(Render, BoxesReachingThePaddingAreWholeAndLeftOfTheLegend) {
  RenderFixture fx({"cat", "dog"}, 24);
  const StoreReader r(fx.store);
  // An image whose crop reaches above the image and past its right side (RandomCrop's
  // padding): once clipped at the canvas' top and drawn through the legend.
  int64_t pick = -1;
  ImageLabels l;
  for (uint64_t i = 0; i < r.num_images() && pick < 0; ++i) {
    r.read(i, l);
    const PixelBox b = store_crop(r.manifest(), l, i, 0).box;
    if (b.top < 0 && b.left > 0) pick = int64_t(i);
  }
  ASSERT_GE(pick, 0);
  const Image img = fx.render(uint64_t(pick));
  // Crop 0's color (230, 25, 75): its box is the only long run of it, 2 px thick. Rows
  // holding a horizontal run of at least 20 px are its top and bottom edges; columns
  // holding a vertical one its left and right edges.
  auto groups = [](const std::vector<int>& lines) {
    int n = 0;
    for (size_t k = 0; k < lines.size(); ++k) n += k == 0 || lines[k] != lines[k - 1] + 1;
    return n;
  };
  std::vector<int> rows, cols;
  for (int y = 0; y < img.height; ++y) {
    int run = 0, best = 0;
    for (int x = 0; x < img.width; ++x)
      best = std::max(best, run = is(img, x, y, 230, 25, 75) ? run + 1 : 0);
    if (best >= 20) rows.push_back(y);
  }
  for (int x = 0; x < img.width; ++x) {
    int run = 0, best = 0;
    for (int y = 0; y < img.height; ++y)
      best = std::max(best, run = is(img, x, y, 230, 25, 75) ? run + 1 : 0);
    if (best >= 20) cols.push_back(x);
  }
  EXPECT_EQ(groups(rows), 2) << "the box's top or bottom edge is missing";
  EXPECT_EQ(groups(cols), 2) << "the box's left or right edge is missing";
  ASSERT_FALSE(cols.empty());
  // The legend's text (black) lies right of the box, never across it.
  int text_left = img.width;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      if (is(img, x, y, 0, 0, 0)) text_left = std::min(text_left, x);
  EXPECT_GT(text_left, cols.back());
}

TEST(Render, TextKeepsItsLowerCase) {
  // Two datasets alike but for the case of their class names: the legends name them apart.
  RenderFixture lower({"cat", "dog"}, 2), upper({"CAT", "DOG"}, 2);
  const Image a = lower.render(0), b = upper.render(0);
  ASSERT_EQ(a.width, b.width);
  ASSERT_EQ(a.height, b.height);
  EXPECT_TRUE(a.pixels != b.pixels) << "the legends differ only in case and render alike";
}

}  // namespace
}  // namespace fkd
