// Teachers as training and labeling open them: from a file, checked against the data, and
// the online-KD teacher that labels a student's batches.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "fkd/models.h"
#include "fkd/train.h"

namespace fkd {

/// A teacher opened from a file: a checkpoint.pt of fkd train (whose run configuration,
/// with the input transform it trained on, is kept) or a TorchScript file (which records
/// none).
struct OpenedTeacher {
  std::unique_ptr<Teacher> net;
  std::optional<TrainConfig> recorded;  ///< the checkpoint's configuration
};

/// Opens a teacher (the file is read once), prepared and run as `o` says; with o.optimize
/// either kind is frozen and optimized for inference (a checkpoint through its TorchScript
/// export, made in memory).
OpenedTeacher open_teacher(const std::string& path, const torch::Device& device,
                           const TeacherOptions& o);

/// Runs the teacher once on a zero [1, channels, size, size] input and throws ConfigError
/// (naming the teacher and the dataset) unless it outputs num_classes logits.
void check_teacher_classes(Teacher& teacher, const std::string& teacher_path,
                           const torch::Device& device, int channels, int size, int num_classes,
                           const std::string& data, const char* role = "teacher");

/// Runs a TorchScript student once in eval mode (check_teacher_classes, on the CPU) and throws
/// ConfigError naming its file, the data and both class counts unless it takes the run's
/// images and outputs its classes; nothing for a zoo model, built to fit.
void check_student_fits(const std::shared_ptr<Net>& net, const TrainConfig& cfg, int num_classes);

/// The online-KD teacher: the student's batches, renormalized to the teacher's own
/// normalization where its checkpoint recorded another, through the frozen teacher.
class OnlineTeacher {
 public:
  /// `student` is the student's resolved configuration (its teacher, input, temperature);
  /// the teacher runs in `amp`, the run's resolved precision.
  OnlineTeacher(const TrainConfig& student, int num_classes, const torch::Device& device,
                AmpMode amp);
  /// softmax(teacher(x) / T) as float32 [n, num_classes], without autograd, for the
  /// student-normalized images x [n, c, h, w].
  torch::Tensor soft_targets(const torch::Tensor& x) const;

 private:
  std::unique_ptr<Teacher> teacher_;
  double temperature_;
  torch::Tensor scale_, shift_;  ///< [1, c, 1, 1]: x * scale + shift is teacher-normalized
};

}  // namespace fkd
