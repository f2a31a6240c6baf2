// The model zoo: networks by name, and teachers (a zoo model or a TorchScript file).
//
// Every model maps [N, C_in, H, W] float32 images to [N, num_classes] float32 logits and
// accepts any H, W (global average pooling before the classifier).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "fkd/amp.h"

namespace fkd {

/// Base of all zoo models. Parameter and buffer names follow torchvision where a
/// torchvision model of the same name exists (resnet18, resnet50, mobilenetv2), so
/// state dicts can be exchanged with Python.
class Net : public torch::nn::Module {
 public:
  /// [N, C_in, H, W] float32 -> [N, num_classes] float32 logits
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  const std::string& zoo_name() const { return zoo_name_; }
  int in_channels() const { return in_channels_; }
  int num_classes() const { return num_classes_; }

 protected:
  Net(std::string zoo_name, int in_channels, int num_classes)
      : torch::nn::Module(zoo_name),
        zoo_name_(std::move(zoo_name)),
        in_channels_(in_channels),
        num_classes_(num_classes) {}

 private:
  std::string zoo_name_;
  int in_channels_;
  int num_classes_;
};

/// Batch statistics shared by the ranks of a data-parallel run (SyncBatchNorm), for a zoo
/// model's BatchNorm layers (set_batch_norm_sync).
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  /// One BatchNorm layer's parameters and buffers (shared handles: updates land in the layer).
  struct Layer {
    torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;
    double momentum = 0.1, eps = 1e-5;
  };
  /// Training-mode batch norm of x [N, C, H, W] with the statistics of every rank's batch,
  /// updating the layer's running statistics as BatchNorm2d does.
  virtual torch::Tensor forward(const torch::Tensor& x, const Layer& layer) = 0;
};

/// Makes every BatchNorm layer of a zoo model normalize with `sync`'s statistics in
/// training (null: each process's own batch, the default); returns how many layers.
int set_batch_norm_sync(torch::nn::Module& net, const std::shared_ptr<BatchNormSync>& sync);

/// Names accepted by make_model, in display order.
std::vector<std::string> model_names();

/// Builds a freshly initialized zoo model (initialization as torchvision does for the
/// same architecture). Throws ConfigError for an unknown name, listing the known ones.
std::shared_ptr<Net> make_model(const std::string& name, int in_channels, int num_classes);

/// Number of trainable parameters.
int64_t count_parameters(const torch::nn::Module& m);

/// Name -> tensor of every parameter and buffer, with torchvision-style dotted names
/// (e.g. "layer1.0.conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked").
std::vector<std::pair<std::string, torch::Tensor>> state_dict(const torch::nn::Module& m);

/// Copies tensors into the module's parameters and buffers by name. Every name of the
/// module must be present with the same shape; throws FormatError naming the first
/// missing or mismatched entry (`source` names the file for the message).
void load_state_dict(torch::nn::Module& m,
                     const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                     const std::string& source);

/// Writes the state dict as a Python pickle (torch.load reads it as a dict of tensors,
/// which torchvision's model of the same name accepts in load_state_dict). The file is a
/// torch.save ZIP archive; `extra_files` (name -> bytes) are added to it as
/// <archive>/extra/<name>, which torch.load ignores and zipfile reads.
void save_state_dict_pickle(const torch::nn::Module& m, const std::string& path,
                            const std::map<std::string, std::string>& extra_files = {});

/// Reads a dict-of-tensors pickle written by save_state_dict_pickle or by Python's
/// torch.save(dict(model.state_dict()), path).
std::vector<std::pair<std::string, torch::Tensor>> load_state_dict_pickle(const std::string& path);

/// Writes a TorchScript file equivalent to the model in eval mode: torch.jit.load(path)
/// in Python returns a module whose forward gives the same logits. A TorchScript student
/// (load_scripted_model) is written as its own module, with the weights it holds now.
/// `extra_files` (name -> bytes) go into the archive's extra/ folder, which Python reads with
/// torch.jit.load(path, _extra_files={name: ""}).
void export_torchscript(Net& m, const std::string& path,
                        const std::map<std::string, std::string>& extra_files = {});
/// The bytes export_torchscript would write (without extra files), in memory.
std::vector<uint8_t> torchscript_bytes(Net& m);

// --- TorchScript students -----------------------------------------------------------------

/// True when a --model/--student value names a TorchScript file rather than a zoo model: it
/// is no zoo name, and it ends in .pt or .pth or names an existing file.
bool is_model_file(const std::string& model);

/// A `torch.jit.script`ed model as a trainable Net, taking [N, in_channels, H, W] images to
/// [N, num_classes] logits (the caller checks that it does: check_student_fits).
/// `archive` holds the bytes of its torch.jit.save file; `source` names that file in
/// messages and is the Net's zoo_name(). Its parameters and buffers are the TorchScript
/// module's own tensors under the module's names (state_dict equals Python's), so
/// optimizers, checkpoints and device moves act on what the module computes with;
/// train()/eval() switch the module's BatchNorm and Dropout. FormatError for an archive that
/// is no TorchScript module, and for a traced one whose BatchNorm/Dropout is fixed to one
/// mode (a traced model without them is accepted: it computes the same in both modes).
std::shared_ptr<Net> load_scripted_model(std::vector<uint8_t> archive, const std::string& source,
                                         int in_channels, int num_classes);

/// The torch.jit.save bytes a load_scripted_model net came from (what a checkpoint carries);
/// null for a zoo model.
const std::vector<uint8_t>* scripted_archive(const Net& net);

/// A frozen network that produces logits for a batch: what labeling and online KD run.
class Teacher {
 public:
  virtual ~Teacher() = default;
  /// [N, C_in, H, W] float32 on any device -> [N, num_classes] float32 logits on the
  /// teacher's device, computed in the teacher's precision (amp()). Runs without autograd.
  virtual torch::Tensor logits(const torch::Tensor& x) = 0;
  /// Human-readable identity (file path or zoo name) and how it runs.
  virtual std::string describe() const = 0;
  /// The precision its convolutions and matrix products run in: kOff (float32), kBf16 or
  /// kFp16.
  virtual AmpMode amp() const = 0;
};

/// How a teacher is prepared and run.
struct TeacherOptions {
  /// Freeze it (BatchNorm folded into convolutions, constants propagated) and, in float32,
  /// optimize it for inference (oneDNN convolutions with prepacked weights on a CPU).
  bool optimize = true;
  /// kOff, kBf16 or kFp16 (a resolved mode; kAuto is refused). In bf16/fp16 the teacher runs
  /// under autocast, as torch.autocast runs a TorchScript model in Python: convolutions and
  /// matrix products in the reduced precision with their weights cast once, on channels-last
  /// input. An optimized float32 graph would bypass autocast (its prepacked oneDNN
  /// convolutions are float32 only), so reduced precision freezes without that step.
  AmpMode amp = AmpMode::kOff;
};

/// Loads a TorchScript teacher (torch.jit.trace / torch.jit.script output, saved by
/// torch.jit.save) onto `device`. Throws FormatError naming the file when it is not a
/// loadable TorchScript archive.
std::unique_ptr<Teacher> load_torchscript_teacher(const std::string& path,
                                                  const torch::Device& device,
                                                  const TeacherOptions& o);
/// The same from a TorchScript archive's bytes; `source` names it in messages.
std::unique_ptr<Teacher> load_torchscript_teacher(const std::vector<uint8_t>& archive,
                                                  const std::string& source,
                                                  const torch::Device& device,
                                                  const TeacherOptions& o);

/// Wraps a trained zoo model (put in eval mode, moved to `device`) as a teacher, run eagerly
/// in precision `amp` (resolved).
std::unique_ptr<Teacher> make_zoo_teacher(std::shared_ptr<Net> net, const torch::Device& device,
                                          AmpMode amp = AmpMode::kOff);

}  // namespace fkd
