#include "input.h"

#include "fkd/models.h"

namespace fkd {

TrainConfig model_input(const TrainConfig* recorded, const InputOverrides& o,
                        const std::string& data, const Dataset& train_set,
                        std::vector<std::string>* notes) {
  TrainConfig c;
  if (recorded) {
    c = *recorded;
  } else {
    c.model = model_names().front();  // only for resolve_config's checks
  }
  // Only the input counts: what the model was trained from does not.
  c.mode = TrainMode::kSupervised;
  c.labels.clear();
  c.teacher.clear();
  c.limit_train = c.limit_val = 0;
  c.data = data;
  if (o.channels) c.channels = o.channels;
  if (o.input_size) {
    c.crop.size = o.input_size;
    c.eval_resize = 0;  // auto for the new size, unless given
  }
  if (o.eval_resize) c.eval_resize = o.eval_resize;
  if (!o.mean.empty()) c.mean = o.mean;
  if (!o.std.empty()) c.std = o.std;
  if (!o.interp.empty()) c.interp = o.interp;
  resolve_config(c, train_set, notes);
  return c;
}

}  // namespace fkd
