// Runs an ONNX model with OpenCV's DNN module (Debian's OpenCV 4.6) on a tensor file of
// `fkd eval --save-inputs`, one image at a time, and writes its logits: the float export's
// second runtime in tests/py/edge_runtimes.py.
//
// usage: opencv_onnx MODEL.onnx INPUTS.f32 OUT.f32
// Exit status: 0 done, 3 OpenCV refused to load or run the model (its message on stderr),
// 1 any other failure.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/dnn.hpp>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: opencv_onnx MODEL.onnx INPUTS.f32 OUT.f32\n";
    return 1;
  }
  std::ifstream meta_file(std::string(argv[2]) + ".json");
  const nlohmann::json meta = nlohmann::json::parse(meta_file);
  const std::vector<int> shape = meta.at("shape").get<std::vector<int>>();
  std::ifstream in(argv[2], std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t per = size_t(shape[1]) * size_t(shape[2]) * size_t(shape[3]);
  if (shape.size() != 4 || bytes.size() != size_t(shape[0]) * per * 4) {
    std::cerr << argv[2] << ": size does not match its JSON shape\n";
    return 1;
  }
  const float* data = reinterpret_cast<const float*>(bytes.data());
  std::vector<float> out;
  try {
    cv::dnn::Net net = cv::dnn::readNetFromONNX(argv[1]);
    for (int i = 0; i < shape[0]; ++i) {
      const int dims[4] = {1, shape[1], shape[2], shape[3]};
      cv::Mat blob(4, dims, CV_32F, const_cast<float*>(data + size_t(i) * per));
      net.setInput(blob);
      const cv::Mat y = net.forward();
      out.insert(out.end(), y.ptr<float>(), y.ptr<float>() + y.total());
    }
  } catch (const cv::Exception& e) {
    std::cerr << "opencv: " << e.what() << "\n";
    return 3;
  }
  std::ofstream o(argv[3], std::ios::binary);
  o.write(reinterpret_cast<const char*>(out.data()), std::streamsize(out.size() * 4));
  return o.good() ? 0 : 1;
}
