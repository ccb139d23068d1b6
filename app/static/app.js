"use strict";
// The draw-a-digit page: plain JavaScript against the service's own HTTP API.

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
let drawing = false;
let inked = false;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

// MNIST digits are light strokes on a dark background, about 2 px wide at 28x28: a 20 px pen here.
ctx.lineWidth = 20;
ctx.lineCap = "round";
ctx.lineJoin = "round";
ctx.strokeStyle = "#fff";
clearPad();

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x, y);
  ctx.stroke();
  inked = true;
  event.preventDefault();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  ctx.lineTo(x, y);
  ctx.stroke();
  event.preventDefault();
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  predictCanvas();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
pad.addEventListener("keydown", (event) => {
  if (event.key === "Delete" || event.key === "Backspace") { clearPad(); event.preventDefault(); }
});

$("clear").addEventListener("click", () => { clearPad(); showNothing(); });
$("predict").addEventListener("click", () => predictCanvas());

function showNothing() {
  newestRequest += 1;  // an answer still on its way is for what was cleared
  lastInput = null;
  $("correct").hidden = true;
  $("feedback-status").textContent = "";
  $("digit").textContent = "–";
  $("confidence").textContent = "–";
  $("not-a-digit").hidden = true;
  $("bars").replaceChildren();
  $("seen").removeAttribute("src");
  $("error").textContent = "";
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

function showPrediction(result) {
  $("error").textContent = "";
  $("digit").textContent = String(result.digit);
  $("confidence").textContent = `${(100 * result.confidence).toFixed(1)}%`;
  $("not-a-digit").textContent = result.not_a_digit
    ? `That does not look like a digit (its out-of-distribution score ${result.ood_score.toFixed(2)} is above `
      + "the threshold): the digit above is only the model's best guess."
    : "";
  $("not-a-digit").hidden = !result.not_a_digit;
  $("model-version").textContent = result.model_version;
  if (result.input_image) $("seen").src = result.input_image;
  const bars = result.probs.map((p, digit) => {
    const item = document.createElement("li");
    if (digit === result.digit) item.className = "top";
    item.innerHTML = `<span>${digit}</span><span class="track"><span class="fill" style="width:${(100 * p).toFixed(1)}%"></span></span><span>${(100 * p).toFixed(1)}%</span>`;
    item.setAttribute("aria-label", `digit ${digit}: ${(100 * p).toFixed(1)} percent`);
    return item;
  });
  $("bars").replaceChildren(...bars);
}

// Only the newest request's answer is shown: an older one that arrives late (a drawing's, say,
// after a file was chosen) must not overwrite it.
let newestRequest = 0;
// The image of the prediction on show, for a correction: the same bytes, so the same 28x28.
let lastInput = null;

// `request` is numbered when the prediction is asked for: a drawing's image is made asynchronously,
// and a file chosen meanwhile is the newer request.
async function predictBlob(blob, name, request = ++newestRequest) {
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("/predict?return_input=true", { method: "POST", body: form });
    const shown = response.ok ? await response.json() : await detailOf(response);
    if (request !== newestRequest) return;
    if (!response.ok) {
      $("error").textContent = `Could not predict: ${shown}`;
      return;
    }
    lastInput = { blob, name, predictionId: shown.prediction_id };
    showPrediction(shown);
    $("correct").hidden = false;
    $("feedback-status").textContent = "";
  } catch (error) {
    if (request === newestRequest) $("error").textContent = `Could not reach the server: ${error.message}`;
  }
}

function predictCanvas() {
  if (!inked) { $("error").textContent = "Draw a digit first."; return; }
  const request = ++newestRequest;
  pad.toBlob((blob) => predictBlob(blob, "drawing.png", request), "image/png");
}

// Upload: file picker, drag and drop, and the keyboard on the drop zone.
const drop = $("drop");
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) predictBlob(file, file.name);
});
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { $("file").click(); event.preventDefault(); }
});
["dragenter", "dragover"].forEach((kind) => drop.addEventListener(kind, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((kind) => drop.addEventListener(kind, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) predictBlob(file, file.name);
});

// "Wrong? It was: 0 ... 9": the image shown is sent again with the digit it really is.
for (let digit = 0; digit <= 9; digit += 1) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = String(digit);
  button.setAttribute("aria-label", `It was a ${digit}`);
  button.addEventListener("click", () => sendCorrection(digit));
  $("correct").append(button);
}

async function sendCorrection(label) {
  if (!lastInput) return;
  const form = new FormData();
  form.append("file", lastInput.blob, lastInput.name);
  form.append("label", String(label));
  form.append("prediction_id", lastInput.predictionId);
  try {
    const response = await fetch("/feedback", { method: "POST", headers: authHeaders(), body: form });
    if (!response.ok) {
      $("feedback-status").textContent = `Could not send the correction: ${await detailOf(response)}`;
      return;
    }
    const item = await response.json();
    $("correct").hidden = true;
    $("feedback-status").textContent = item.status === "pending"
      ? `Thank you: a ${label}, kept for review (correction ${item.id}).`
      : `Thank you: a ${label}, kept for training (correction ${item.id}).`;
    loadFeedbackCount();
  } catch (error) {
    $("feedback-status").textContent = `Could not reach the server: ${error.message}`;
  }
}

async function loadFeedbackCount() {
  const response = await fetch("/feedback?limit=0");
  if (!response.ok) return;
  const counts = (await response.json()).counts;
  const split = counts.accepted_by_split;
  $("feedback-count").textContent = `(${counts.by_status.accepted} accepted: ${split.train} to train on, `
    + `${split.heldout} held out; ${counts.by_status.pending} pending)`;
}

async function loadModel() {
  const response = await fetch("/model");
  if (!response.ok) {
    $("model-version").textContent = `none (${await detailOf(response)})`;
    $("card-summary").textContent = "No model is being served.";
    $("confusion").hidden = true;
    $("reliability-figure").hidden = true;
    $("not-a-digit-kinds").hidden = true;
    return;
  }
  const model = await response.json();
  $("model-version").textContent = model.model_version;
  showCard(model);
}

// The serving model's card: accuracy, and the confusion matrix as a heat map (a real table, so
// every count can be read, and by a screen reader too).
function showCard(model) {
  const matrix = model.confusion_matrix;
  if (!Array.isArray(matrix) || matrix.length !== 10) {
    $("card-summary").textContent = `Model ${model.model_version} has no recorded test figures (a file made without `
      + "its metadata): the next training job measures it on the test set before comparing.";
    $("confusion").hidden = true;
    $("reliability-figure").hidden = true;
    $("not-a-digit-kinds").hidden = true;
    return;
  }
  const total = matrix.flat().reduce((a, b) => a + b, 0);
  const errors = total - matrix.reduce((sum, row, digit) => sum + row[digit], 0);
  const threshold = model.serving && model.serving.settings ? model.serving.settings.low_confidence : null;
  const tradeOff = (model.low_confidence || []).find((row) => row.threshold === threshold);
  $("card-summary").textContent = `Model ${model.model_version}: test accuracy ${model.test_accuracy}%, `
    + `${errors} of ${total.toLocaleString("en")} test digits wrong.`
    + (tradeOff ? ` Flagging answers below ${100 * threshold}% confidence marks ${tradeOff.flagged_percent}% of `
      + `digits and catches ${tradeOff.errors_caught_percent}% of the errors.` : "")
    + realWorld(model.feedback_heldout);
  const worstError = Math.max(1, ...matrix.flatMap((row, digit) => row.filter((_, col) => col !== digit)));
  const head = document.createElement("tr");
  head.innerHTML = '<th scope="col">true \\ predicted</th>'
    + matrix.map((_, col) => `<th scope="col">${col}</th>`).join("") + '<th scope="col">accuracy</th>';
  $("confusion").tHead.replaceChildren(head);
  const rows = matrix.map((row, digit) => {
    const tr = document.createElement("tr");
    const rowTotal = row.reduce((a, b) => a + b, 0) || 1;
    tr.innerHTML = `<th scope="row">${digit}</th>`;
    row.forEach((count, col) => {
      const cell = document.createElement("td");
      const right = col === digit;
      // Right answers in green by their share of the row; errors in red against the worst cell.
      const strength = right ? count / rowTotal : Math.sqrt(count / worstError);
      cell.style.background = right ? `rgba(10, 125, 50, ${0.15 + 0.85 * strength})` : `rgba(200, 30, 30, ${count ? 0.08 + 0.8 * strength : 0})`;
      cell.style.color = strength > 0.55 ? "#fff" : "#111";
      cell.textContent = String(count);
      cell.dataset.count = String(count);
      cell.title = `true ${digit}, predicted ${col}: ${count} digit${count === 1 ? "" : "s"}`;
      tr.append(cell);
    });
    const rate = document.createElement("td");
    rate.className = "rate";
    rate.textContent = `${(100 * row[digit] / rowTotal).toFixed(1)}%`;
    tr.append(rate);
    return tr;
  });
  $("confusion").tBodies[0].replaceChildren(...rows);
  $("confusion").hidden = false;
  showReliability(model.calibration);
  showNotADigit(model.not_a_digit, model.serving && model.serving.not_a_digit);
}

// The reliability diagram: in each bin of confidence, the share of test digits answered right
// (bars) against the confidence the answers stated (the diagonal, where a calibrated model's bars end).
function showReliability(calibration) {
  const bins = calibration && Array.isArray(calibration.reliability) ? calibration.reliability : [];
  $("reliability-figure").hidden = bins.length === 0;
  if (!bins.length) return;
  const svg = "http://www.w3.org/2000/svg";
  const [left, top, size] = [36, 8, 190];
  const x = (value) => left + size * value;
  const y = (value) => top + size * (1 - value);
  const shape = (name, attributes, text) => {
    const element = document.createElementNS(svg, name);
    Object.entries(attributes).forEach(([key, value]) => element.setAttribute(key, String(value)));
    if (text !== undefined) element.textContent = text;
    return element;
  };
  const parts = [
    shape("rect", { x: left, y: top, width: size, height: size, fill: "#fafbfc", stroke: "#ccc" }),
    shape("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#999", "stroke-dasharray": "4 3" }),
  ];
  bins.filter((bin) => bin.count > 0).forEach((bin) => {
    const bar = shape("rect", {
      x: x(bin.low) + 1, y: y(bin.accuracy), width: size * (bin.high - bin.low) - 2,
      height: Math.max(0, size * bin.accuracy), fill: "#0b5cad", class: "bin",
    });
    bar.dataset.count = String(bin.count);
    bar.append(shape("title", {}, `confidence ${(100 * bin.low).toFixed(0)}-${(100 * bin.high).toFixed(0)}%: `
      + `${bin.count} digit${bin.count === 1 ? "" : "s"}, ${(100 * bin.accuracy).toFixed(1)}% right `
      + `(stated ${(100 * bin.confidence).toFixed(1)}%)`));
    parts.push(bar);
  });
  [0, 0.5, 1].forEach((tick) => {
    parts.push(shape("text", { x: x(tick), y: top + size + 14, "text-anchor": "middle", class: "tick" }, String(tick)));
    parts.push(shape("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end", class: "tick" }, String(tick)));
  });
  parts.push(shape("text", { x: x(0.5), y: top + size + 28, "text-anchor": "middle", class: "tick" }, "confidence"));
  $("reliability").replaceChildren(...parts);
  $("reliability-caption").textContent = `Reliability on the test digits: each bar is the share right among `
    + `answers of that confidence; a calibrated model's bars reach the dashed line. Expected calibration error `
    + `${calibration.ece_percent}% (${calibration.ece_percent_before}% before calibration, temperature `
    + `${calibration.temperature}${calibration.validation_samples ? `, fitted on ${calibration.validation_samples} `
      + "held-out training digits" : ", the network's own: nothing was held out to fit one"}).`;
}

// Per kind of non-digit: the share the model's own threshold flags and the AUROC against MNIST's
// test digits (the card's figures, measured at training on images no training run drew).
function showNotADigit(card, inForce) {
  const table = $("not-a-digit-kinds");
  table.hidden = !card || !card.kinds;
  if (table.hidden) return;
  const rows = Object.entries(card.kinds).map(([kind, figures]) => {
    const row = document.createElement("tr");
    for (const text of [kind, `${figures.flagged_percent}%`, figures.auroc.toFixed(3), figures.trained_on ? "yes" : "no"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
  const setting = inForce && inForce.source === "setting" ? ` (MNIST_NOT_A_DIGIT_THRESHOLD ${inForce.threshold} is in force)` : "";
  $("not-a-digit-caption").textContent = `Not a digit: the threshold ${card.threshold.toFixed(4)}${setting} flags `
    + `${card.test_flagged_percent}% of the test digits, and of each kind of non-digit:`;
}

// The model on users' held-out corrections, beside MNIST's figures.
function realWorld(heldout) {
  if (!heldout || !heldout.count) return " Not measured on held-out corrections yet.";
  return ` Real world: ${heldout.accuracy}% right on ${heldout.count} held-out correction`
    + `${heldout.count === 1 ? "" : "s"}.`;
}

// The job's live curves, drawn by hand on a canvas: the training loss over the run (left axis)
// and the test accuracy after each epoch (right axis).
function drawCurves(job) {
  const canvas = $("curve");
  const g = canvas.getContext("2d");
  const p = job.progress || {};
  const losses = p.losses || [];
  const history = p.history || [];
  const epochs = p.epochs || job.hyperparameters.epochs || 1;
  const [w, h] = [canvas.width, canvas.height];
  const box = { left: 48, right: w - 52, top: 14, bottom: h - 30 };
  g.clearRect(0, 0, w, h);
  g.font = "12px system-ui, sans-serif";
  g.strokeStyle = "#c9ced6";
  g.fillStyle = "#555";
  g.lineWidth = 1;
  g.strokeRect(box.left, box.top, box.right - box.left, box.bottom - box.top);
  g.textAlign = "center";
  for (let epoch = 0; epoch <= epochs; epoch += Math.max(1, Math.ceil(epochs / 10))) {
    g.fillText(String(epoch), box.left + (box.right - box.left) * epoch / epochs, box.bottom + 16);
  }
  g.fillText("epoch", (box.left + box.right) / 2, h - 1);
  const maxLoss = Math.max(0.1, ...losses.map((point) => point[1]));
  const accuracies = history.map((entry) => entry.test_accuracy);
  const lowAccuracy = Math.min(90, ...accuracies.map((a) => Math.floor(a / 10) * 10));
  const x = (fraction) => box.left + (box.right - box.left) * fraction;
  const yLoss = (loss) => box.bottom - (box.bottom - box.top) * Math.min(loss, maxLoss) / maxLoss;
  const yAccuracy = (a) => box.bottom - (box.bottom - box.top) * (a - lowAccuracy) / (100 - lowAccuracy);
  g.textAlign = "right";
  g.fillText(maxLoss.toFixed(2), box.left - 4, box.top + 10);
  g.fillText("0", box.left - 4, box.bottom);
  g.textAlign = "left";
  g.fillText("100%", box.right + 4, box.top + 10);
  g.fillText(`${lowAccuracy}%`, box.right + 4, box.bottom);
  g.strokeStyle = "#0b5cad";
  g.fillStyle = "#0b5cad";
  g.lineWidth = 2;
  g.beginPath();
  losses.forEach(([fraction, loss], i) => (i ? g.lineTo(x(fraction), yLoss(loss)) : g.moveTo(x(fraction), yLoss(loss))));
  g.stroke();
  losses.forEach(([fraction, loss]) => { g.beginPath(); g.arc(x(fraction), yLoss(loss), 2, 0, 2 * Math.PI); g.fill(); });
  g.strokeStyle = "#d9730d";
  g.fillStyle = "#d9730d";
  g.beginPath();
  history.forEach((entry, i) => {
    const [px, py] = [x(entry.epoch / epochs), yAccuracy(entry.test_accuracy)];
    if (i) g.lineTo(px, py); else g.moveTo(px, py);
  });
  g.stroke();
  history.forEach((entry) => {
    const [px, py] = [x(entry.epoch / epochs), yAccuracy(entry.test_accuracy)];
    g.beginPath(); g.arc(px, py, 4, 0, 2 * Math.PI); g.fill();
    g.textAlign = "right";
    g.fillText(`${entry.test_accuracy.toFixed(2)}%`, px - 6, py - 6);
  });
  canvas.dataset.points = String(losses.length + history.length);
  canvas.setAttribute("aria-label", `Training curves: ${losses.length} loss points`
    + (history.length ? `, test accuracy ${accuracies.map((a) => `${a.toFixed(2)}%`).join(", ")}` : ""));
}

// Several training processes per job only where the server allows them (also with no model yet).
async function loadTrainingLimits() {
  const response = await fetch("/train?limit=1");
  if (!response.ok) return;
  const maxProcs = (await response.json()).max_nproc_per_node;
  $("procs-field").hidden = !(maxProcs > 1);
  $("train-form").elements.nproc_per_node.max = maxProcs;
}

// Training panel.
let polling = null;
let currentJob = null;

function authHeaders() {
  const token = $("train-form").elements.token.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function describe(job) {
  const p = job.progress || {};
  const parts = [`Job ${job.id}: ${job.status}`];
  if (p.epoch) parts.push(`epoch ${p.epoch} of ${p.epochs}`);
  if (p.loss != null) parts.push(`loss ${p.loss.toFixed(4)}`);
  if (p.test_accuracy != null) parts.push(`test accuracy ${p.test_accuracy.toFixed(2)}%`);
  return parts.join(", ");
}

function showJob(job) {
  $("job-status").textContent = describe(job);
  $("job-progress").value = job.progress && job.progress.fraction ? job.progress.fraction : (job.status === "succeeded" ? 1 : 0);
  const active = job.status === "queued" || job.status === "running";
  $("train").disabled = active;
  $("cancel").hidden = !active;
  drawCurves(job);
  // (A job recorded without `promotion`, by an older trainer, was promoted if it succeeded.)
  const promoted = job.promotion ? job.promotion.promoted : job.status === "succeeded";
  // A model that was kept but not activated can still be served, by a person's choice.
  $("activate").hidden = !(job.model_version && job.promotion && !promoted);
  $("activate").dataset.version = job.model_version || "";
  if (job.status === "succeeded" && promoted) {
    $("job-detail").textContent = `New model ${job.model_version} promoted (test accuracy ${job.test_accuracy}%) and now served.`;
    loadModel();
  } else if (job.status === "succeeded") {
    $("job-detail").textContent = `New model ${job.model_version} (test accuracy ${job.test_accuracy}%) kept as a version, not served: ${job.promotion.reason}.`;
    loadModel();  // the serving model may have been measured for the comparison
  } else if (job.error) {
    $("job-detail").textContent = job.error;
    if (job.status === "rejected") loadModel();
  } else {
    $("job-detail").textContent = "";
  }
}

$("activate").addEventListener("click", async () => {
  const version = $("activate").dataset.version;
  const response = await fetch(`/model/versions/${version}/activate`, { method: "POST", headers: authHeaders() });
  if (!response.ok) {
    $("job-detail").textContent = `Could not activate ${version}: ${await detailOf(response)}`;
    return;
  }
  $("activate").hidden = true;
  $("job-detail").textContent = `Version ${version} activated by hand and now served.`;
  loadModel();
});

async function poll() {
  const response = await fetch(`/train/${currentJob}`);
  if (!response.ok) { $("job-detail").textContent = await detailOf(response); return; }
  const job = await response.json();
  if (job.status !== "queued" && job.status !== "running") { clearInterval(polling); polling = null; }
  showJob(job);
}

$("train-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = $("train-form").elements;
  const body = {};
  for (const name of ["epochs", "lr", "limit_train", "min_accuracy"]) {
    if (fields[name].value !== "") body[name] = Number(fields[name].value);
  }
  body.recipe = fields.recipe.value;
  body.promote = fields.promote.value;
  if (fields.use_feedback.checked) body.use_feedback = true;
  if (!$("procs-field").hidden && Number(fields.nproc_per_node.value) > 1) {
    body.nproc_per_node = Number(fields.nproc_per_node.value);
  }
  const response = await fetch("/train", {
    method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
  });
  if (!response.ok) {
    $("job-status").textContent = `Could not start training: ${await detailOf(response)}`;
    return;
  }
  const job = await response.json();
  currentJob = job.id;
  showJob(job);
  if (polling) clearInterval(polling);
  polling = setInterval(poll, 500);
});

$("cancel").addEventListener("click", async () => {
  if (!currentJob) return;
  const response = await fetch(`/train/${currentJob}`, { method: "DELETE", headers: authHeaders() });
  if (!response.ok) $("job-detail").textContent = `Could not cancel: ${await detailOf(response)}`;
  else showJob(await response.json());
});

loadModel();
loadTrainingLimits();
loadFeedbackCount();
