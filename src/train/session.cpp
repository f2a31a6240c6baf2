#include "session.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include <fmt/core.h>

#include "checkpoint.h"
#include "fkd/error.h"
#include "fkd/progress.h"

namespace fkd {

int configure_threads(int threads) {
  FKD_CHECK(threads >= 0, ConfigError, "--threads must be >= 0");
  const int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
  return n;
}

torch::Device parse_device(const std::string& spec) {
  std::unique_ptr<torch::Device> d;
  try {
    d = std::make_unique<torch::Device>(spec);
  } catch (const c10::Error&) {
    fail<ConfigError>("--device '{}': expected cpu, cuda or cuda:N", spec);
  }
  if (d->is_cuda()) {
    FKD_CHECK(torch::cuda::is_available(), ConfigError,
              "--device {}: this fkd was built against a LibTorch without CUDA, or no GPU is "
              "visible (build with CMAKE_PREFIX_PATH pointing to a CUDA LibTorch)",
              spec);
    const int idx = d->has_index() ? d->index() : 0;
    FKD_CHECK(idx < int(torch::cuda::device_count()), ConfigError,
              "--device {}: only {} CUDA device(s) visible", spec, torch::cuda::device_count());
  } else {
    FKD_CHECK(d->is_cpu(), ConfigError, "--device '{}': expected cpu, cuda or cuda:N", spec);
  }
  return *d;
}

namespace {
Normalize make_norm(const TrainConfig& cfg) {
  Normalize n;
  for (size_t c = 0; c < cfg.mean.size() && c < 3; ++c) {
    n.mean[c] = cfg.mean[c];
    n.std[c] = cfg.std[c];
  }
  return n;
}
}  // namespace

TrainTransform train_transform(const TrainConfig& cfg) {
  TrainTransform t;
  t.crop = parse_crop_kind(cfg.aug);
  t.size = cfg.input_size;
  t.scale[0] = cfg.scale[0];
  t.scale[1] = cfg.scale[1];
  t.ratio[0] = cfg.ratio[0];
  t.ratio[1] = cfg.ratio[1];
  t.padding = cfg.padding;
  t.flip_prob = cfg.flip;
  t.interp = parse_interp(cfg.interp);
  t.norm = make_norm(cfg);
  return t;
}

EvalTransform eval_transform(const TrainConfig& cfg) {
  EvalTransform t;
  t.resize = cfg.eval_resize;
  t.size = cfg.input_size;
  t.interp = parse_interp(cfg.interp);
  t.norm = make_norm(cfg);
  return t;
}

torch::Tensor batch_images(const Batch& b, const torch::Device& device, bool channels_last) {
  auto keep = b.images;
  auto t = torch::from_blob(
      b.images.get(), {b.n, b.c, b.h, b.w}, [keep](void*) {}, torch::kFloat32);
  if (!device.is_cpu()) t = t.to(device, /*non_blocking=*/true);
  return channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

void place_model(torch::nn::Module& net, const torch::Device& device, bool channels_last) {
  net.to(device);
  if (!channels_last) return;
  torch::NoGradGuard no_grad;
  for (auto& p : net.parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(at::MemoryFormat::ChannelsLast));
  }
}

torch::Tensor batch_targets(const Batch& b, const torch::Device& device) {
  auto t = torch::tensor(b.targets, torch::kLong);
  return device.is_cpu() ? t : t.to(device);
}

double lr_at(double lr, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return lr * double(step + 1) / double(warmup);
  const double span = double(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, double(step - warmup) / span);
  return 0.5 * lr * (1.0 + std::cos(M_PI * progress));
}

std::unique_ptr<Teacher> open_teacher(const std::string& path, const torch::Device& device,
                                      bool optimize, TrainConfig* checkpoint_cfg,
                                      bool* is_ckpt) {
  const bool ckpt = is_checkpoint(path);
  if (is_ckpt) *is_ckpt = ckpt;
  if (!ckpt) return load_torchscript_teacher(path, device, optimize);
  CheckpointMeta meta;
  auto net = load_checkpoint(path, &meta);
  if (checkpoint_cfg) *checkpoint_cfg = meta.config;
  if (!optimize) return make_zoo_teacher(net, device);
  // Through TorchScript, so that the teacher is frozen and optimized like a traced one.
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() /
                       fmt::format("fkd-teacher-{}-{}.pt", ::getpid(), fs::path(path).stem().string());
  net->eval();
  export_torchscript(*net, tmp.string());
  std::unique_ptr<Teacher> t;
  try {
    t = load_torchscript_teacher(tmp.string(), device, /*optimize=*/true);
  } catch (...) {
    fs::remove(tmp);
    throw;
  }
  fs::remove(tmp);
  return t;
}

void check_teacher_classes(Teacher& teacher, const std::string& teacher_path,
                           const torch::Device& device, int channels, int size, int num_classes,
                           const std::string& data, const char* role) {
  const auto probe = torch::zeros({1, channels, size, size},
                                  torch::TensorOptions(device).dtype(torch::kFloat32));
  torch::Tensor out;
  try {
    out = teacher.logits(probe);
  } catch (const Error& e) {
    fail<ConfigError>("{} (the {} gets {}'s images at --channels {} and --input-size {}: set "
                      "them to what it takes)",
                      one_line(e.what()), role, data, channels, size);
  }
  FKD_CHECK(out.dim() == 2 && out.size(1) == num_classes, ConfigError,
            "{} {} outputs {} for a [1, {}, {}, {}] input, but {} has {} classes", role,
            teacher_path, c10::str(out.sizes()), channels, size, size, data, num_classes);
}

EvalResult run_evaluation(const std::function<torch::Tensor(const torch::Tensor&)>& forward,
                          Loader& loader, const torch::Device& device, bool channels_last,
                          const std::string& label) {
  torch::NoGradGuard no_grad;
  loader.start_epoch(0);
  Progress bar(label, loader.dataset().size(), "img");
  torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kDouble));
  torch::Tensor top1 = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kLong));
  torch::Tensor top5 = torch::zeros({}, torch::TensorOptions(device).dtype(torch::kLong));
  size_t n = 0;
  Batch b;
  while (loader.next(b)) {
    if (b.n == 0) continue;
    const auto x = batch_images(b, device, channels_last);
    const auto y = batch_targets(b, device);
    const auto logits = forward(x).to(torch::kFloat32);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y,
                    torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .to(torch::kDouble);
    const int64_t k = std::min<int64_t>(5, logits.size(1));
    const auto pred = std::get<1>(logits.topk(k, /*dim=*/1));
    const auto hit = pred.eq(y.unsqueeze(1));
    top1 += hit.select(1, 0).sum();
    top5 += hit.any(1).sum();
    n += size_t(b.n);
    bar.advance(uint64_t(b.n));
  }
  bar.finish();
  EvalResult r;
  r.samples = n;
  r.bad_samples = loader.skipped();
  if (n > 0) {
    r.loss = loss_sum.item<double>() / double(n);
    r.top1 = 100.0 * double(top1.item<int64_t>()) / double(n);
    r.top5 = 100.0 * double(top5.item<int64_t>()) / double(n);
  }
  return r;
}

}  // namespace fkd
