// Runs an ONNX model in onnxruntime (npm's onnxruntime-node) on a tensor file written by
// `fkd eval --save-inputs` or `fkd export --calibration`, and reports its top-1.
//
// usage: node ort_eval.js MODEL.onnx INPUTS.f32 [--logits OUT.f32] [--compare LOGITS.f32]
//   INPUTS.f32.json (or the .json beside a calibration file) gives the shape and the labels.
//   --logits   writes onnxruntime's logits, float32 [N, classes], little-endian
//   --compare  fkd's logits of the same inputs (fkd eval --save-logits): prints the largest
//              difference relative to the largest |logit|, and how often the argmax agrees
// Prints one JSON line: {"images", "top1", "max_relative_diff", "argmax_agreement", ...}.
// onnxruntime-node is found in a node_modules folder above the current directory or above
// this file, or through NODE_PATH:  npm install --ignore-scripts onnxruntime-node
'use strict';
const fs = require('fs');
const ort = require(require.resolve('onnxruntime-node', {paths: [process.cwd(), __dirname]}));

function readTensors(path) {
  const metaPath = fs.existsSync(path + '.json') ? path + '.json'
                                                 : path.replace(/\.f32$/, '.json');
  const meta = JSON.parse(fs.readFileSync(metaPath, 'utf8'));
  const bytes = fs.readFileSync(path);
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const count = meta.shape.reduce((a, b) => a * b, 1);
  if (data.length !== count) {
    throw new Error(`${path}: ${data.length} floats, its JSON says shape [${meta.shape}]`);
  }
  return {meta, data};
}

async function main() {
  const args = process.argv.slice(2);
  const opt = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const [modelPath, inputPath] = args;
  const {meta, data} = readTensors(inputPath);
  const [n, ...chw] = meta.shape;
  const per = chw.reduce((a, b) => a * b, 1);
  const session = await ort.InferenceSession.create(modelPath, {intraOpNumThreads: 1, logSeverityLevel: 3});
  const declared = session.inputMetadata[0].shape[0];
  const batch = typeof declared === 'number' && declared > 0 ? declared : 64;
  const inputName = session.inputNames[0], outputName = session.outputNames[0];
  const logits = [];
  let classes = 0;
  for (let start = 0; start < n; start += batch) {
    const rows = Math.min(batch, n - start);
    // A static batch larger than what is left is filled with zeros; those rows are dropped.
    const x = new Float32Array(batch * per);
    x.set(data.subarray(start * per, (start + rows) * per));
    const out = await session.run({[inputName]: new ort.Tensor('float32', x, [batch, ...chw])});
    const y = out[outputName];
    classes = y.dims[1];
    logits.push(y.data.subarray(0, rows * classes));
  }
  const all = new Float32Array(n * classes);
  let at = 0;
  for (const part of logits) {
    all.set(part, at);
    at += part.length;
  }
  const argmax = (v, row) => {
    let best = 0;
    for (let c = 1; c < classes; ++c) if (v[row * classes + c] > v[row * classes + best]) best = c;
    return best;
  };
  const report = {model: modelPath, images: n};
  if (meta.labels) {
    let hits = 0;
    for (let i = 0; i < n; ++i) hits += argmax(all, i) === meta.labels[i] ? 1 : 0;
    report.top1 = (100 * hits) / n;
  }
  const compare = opt('--compare');
  if (compare) {
    const ref = readTensors(compare).data;
    let maxDiff = 0, maxRef = 0, agree = 0;
    for (let i = 0; i < all.length; ++i) {
      maxDiff = Math.max(maxDiff, Math.abs(all[i] - ref[i]));
      maxRef = Math.max(maxRef, Math.abs(ref[i]));
    }
    for (let i = 0; i < n; ++i) agree += argmax(all, i) === argmax(ref, i) ? 1 : 0;
    report.max_relative_diff = maxDiff / Math.max(maxRef, 1e-12);
    report.argmax_agreement = (100 * agree) / n;
  }
  const out = opt('--logits');
  if (out) fs.writeFileSync(out, Buffer.from(all.buffer, all.byteOffset, all.byteLength));
  console.log(JSON.stringify(report));
}

main().catch((e) => {
  console.error(`ort_eval: ${e.message}`);
  process.exit(1);
});
