// Pieces of a training run shared by the supervised, FKD and KD loops.
#pragma once
#include <memory>
#include <string>

#include <torch/torch.h>

#include "fkd/dataset.h"
#include "fkd/loader.h"
#include "fkd/models.h"
#include "fkd/train.h"

namespace fkd {

/// Parses "cpu", "cuda", "cuda:N"; a clear ConfigError when CUDA is asked for but absent.
torch::Device parse_device(const std::string& spec);

/// The transforms a resolved config describes.
TrainTransform train_transform(const TrainConfig& cfg);
EvalTransform eval_transform(const TrainConfig& cfg);

/// A batch's images as a tensor on `device` ([n, c, h, w] float32); on the CPU it shares
/// the batch's memory unless channels_last asks for NHWC strides.
torch::Tensor batch_images(const Batch& b, const torch::Device& device, bool channels_last);

/// Moves a model to `device`, with its 4-D weights in channels-last layout if asked.
void place_model(torch::nn::Module& net, const torch::Device& device, bool channels_last);
/// A batch's class indices, int64 [n] on `device`.
torch::Tensor batch_targets(const Batch& b, const torch::Device& device);

/// Learning rate at optimizer step `step` of `total` steps: linear warm-up over
/// `warmup` steps from lr/warmup to lr, then cosine decay to 0.
double lr_at(double lr, int64_t step, int64_t warmup, int64_t total);

/// Opens a teacher: a checkpoint.pt of fkd train (its config is copied to *checkpoint_cfg
/// when given, and *is_checkpoint set) or a TorchScript file. With optimize, either kind
/// is frozen and optimized for inference (a checkpoint through its TorchScript export).
std::unique_ptr<Teacher> open_teacher(const std::string& path, const torch::Device& device,
                                      bool optimize, TrainConfig* checkpoint_cfg = nullptr,
                                      bool* is_checkpoint = nullptr);

/// Runs the teacher once on a zero [1, channels, size, size] input and throws ConfigError
/// (naming the teacher and the dataset) unless it outputs num_classes logits.
void check_teacher_classes(Teacher& teacher, const std::string& teacher_path,
                           const torch::Device& device, int channels, int size, int num_classes,
                           const std::string& data, const char* role = "teacher");

/// Loss, top-1 and top-5 of `forward` over every batch of `loader` (one epoch 0 pass).
EvalResult run_evaluation(const std::function<torch::Tensor(const torch::Tensor&)>& forward,
                          Loader& loader, const torch::Device& device, bool channels_last,
                          const std::string& label);

}  // namespace fkd
