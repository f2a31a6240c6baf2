#include "teachers.h"

#include <fmt/core.h>

#include "checkpoint.h"
#include "fkd/error.h"

namespace fkd {

OpenedTeacher open_teacher(const std::string& path, const torch::Device& device,
                           const TeacherOptions& o) {
  OpenedTeacher t;
  std::optional<CheckpointFile> ckpt = try_open_checkpoint(path);
  if (!ckpt) {
    t.net = load_torchscript_teacher(path, device, o);
    return t;
  }
  t.recorded = ckpt->meta.config;
  std::shared_ptr<Net> net = checkpoint_model(*ckpt);
  if (!o.optimize) {
    t.net = make_zoo_teacher(net, device, o.amp);
    return t;
  }
  // Through TorchScript, so that the teacher is frozen and optimized like a traced one.
  net->eval();
  t.net = load_torchscript_teacher(torchscript_bytes(*net), path, device, o);
  return t;
}

void check_student_fits(const std::shared_ptr<Net>& net, const TrainConfig& cfg, int num_classes) {
  if (!scripted_archive(*net)) return;
  check_teacher_classes(*make_zoo_teacher(net, torch::kCPU), cfg.model, torch::kCPU, cfg.channels,
                        cfg.crop.size, num_classes, cfg.data, "student");
}

void check_teacher_classes(Teacher& teacher, const std::string& teacher_path,
                           const torch::Device& device, int channels, int size, int num_classes,
                           const std::string& data, const char* role) {
  const auto probe =
      torch::zeros({1, channels, size, size}, torch::TensorOptions(device).dtype(torch::kFloat32));
  torch::Tensor out;
  try {
    out = teacher.logits(probe);
  } catch (const Error& e) {
    fail<ConfigError>(
        "{} (the {} gets {}'s images at --channels {} and --input-size {}: set "
        "them to what it takes)",
        one_line(e.what()), role, data, channels, size);
  }
  FKD_CHECK(out.dim() == 2 && out.size(1) == num_classes, ConfigError,
            "{} {} outputs {} for a [1, {}, {}, {}] input, but {} has {} classes", role,
            teacher_path, c10::str(out.sizes()), channels, size, size, data, num_classes);
}

OnlineTeacher::OnlineTeacher(const TrainConfig& s, int num_classes, const torch::Device& device,
                             AmpMode amp)
    : temperature_(s.temperature) {
  OpenedTeacher t = open_teacher(s.teacher, device, {/*optimize=*/true, amp});
  teacher_ = std::move(t.net);
  check_teacher_classes(*teacher_, s.teacher, device, s.channels, s.crop.size, num_classes, s.data);
  // A checkpoint teacher trained with another normalization gets its own: the student's
  // images are (p - mean_s) / std_s, the teacher's (p - mean_t) / std_t.
  if (!t.recorded || (t.recorded->mean == s.mean && t.recorded->std == s.std)) return;
  const TrainConfig& tc = *t.recorded;
  FKD_CHECK(tc.mean.size() == s.mean.size(), ConfigError,
            "teacher {} takes {} input channels, the student {}", s.teacher, tc.mean.size(),
            s.mean.size());
  std::vector<float> scale, shift;
  for (size_t c = 0; c < s.mean.size(); ++c) {
    scale.push_back(s.std[c] / tc.std[c]);
    shift.push_back((s.mean[c] - tc.mean[c]) / tc.std[c]);
  }
  const int64_t nc = int64_t(scale.size());
  scale_ = torch::tensor(scale).view({1, nc, 1, 1}).to(device);
  shift_ = torch::tensor(shift).view({1, nc, 1, 1}).to(device);
}

torch::Tensor OnlineTeacher::soft_targets(const torch::Tensor& x) const {
  torch::NoGradGuard no_grad;
  const auto xt = scale_.defined() ? x * scale_ + shift_ : x;
  return torch::softmax(teacher_->logits(xt).to(torch::kFloat32) / temperature_, 1);
}

}  // namespace fkd
