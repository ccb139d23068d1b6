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
  $("digit").textContent = "–";
  $("confidence").textContent = "–";
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

async function predictBlob(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("/predict?return_input=true", { method: "POST", body: form });
    if (!response.ok) {
      $("error").textContent = `Could not predict: ${await detailOf(response)}`;
      return;
    }
    showPrediction(await response.json());
  } catch (error) {
    $("error").textContent = `Could not reach the server: ${error.message}`;
  }
}

function predictCanvas() {
  if (!inked) { $("error").textContent = "Draw a digit first."; return; }
  pad.toBlob((blob) => predictBlob(blob, "drawing.png"), "image/png");
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

async function loadModel() {
  const response = await fetch("/model");
  $("model-version").textContent = response.ok ? (await response.json()).model_version : `none (${await detailOf(response)})`;
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
  if (job.status === "succeeded") {
    $("job-detail").textContent = `New model ${job.model_version} promoted (test accuracy ${job.test_accuracy}%) and now served.`;
    loadModel();
loadTrainingLimits();
  } else if (job.error) {
    $("job-detail").textContent = job.error;
  } else {
    $("job-detail").textContent = "";
  }
}

async function poll() {
  const response = await fetch(`/train/${currentJob}`);
  if (!response.ok) { $("job-detail").textContent = await detailOf(response); return; }
  const job = await response.json();
  showJob(job);
  if (job.status !== "queued" && job.status !== "running") { clearInterval(polling); polling = null; }
}

$("train-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = $("train-form").elements;
  const body = {};
  for (const name of ["epochs", "lr", "limit_train", "min_accuracy"]) {
    if (fields[name].value !== "") body[name] = Number(fields[name].value);
  }
  body.recipe = fields.recipe.value;
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
