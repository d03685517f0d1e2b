// VisionLoop upload page: classify an image, show the answer, send a correction. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the last /classify answer
const NONE_OF_THESE = "none_of_these";

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function classify(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("result").hidden = true;
  $("feedback").hidden = true;
  $("thanks").textContent = "";
  setStatus("Looking at your image...");
  const body = new FormData();
  body.append("image", file);
  try {
    const response = await fetch("/classify", { method: "POST", body });
    const data = await response.json();
    if (!response.ok) { setStatus(data.error || `Error ${response.status}`, true); return; }
    current = data;
    setStatus("");
    showResult(data);
  } catch (err) {
    setStatus(`Could not reach the service: ${err}`, true);
  }
}

function showResult(data) {
  $("answer").textContent = data.is_ood ? "We are not sure" : `It is a ${data.label.replaceAll("_", " ")}`;
  $("message").textContent = data.message || "";
  $("message").classList.toggle("ood", data.is_ood);
  $("imagenet").hidden = !data.imagenet;
  if (data.imagenet) {
    const guess = data.imagenet;
    const ours = guess.label ? ` (our class: ${guess.label.replaceAll("_", " ")})` : "";
    $("imagenet").textContent = `A ResNet50 trained on ImageNet sees: ${guess.imagenet_label}${ours}`;
  }
  const list = $("probabilities");
  list.replaceChildren();
  const entries = Object.entries(data.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const li = document.createElement("li");
    li.classList.toggle("top", name === data.label);
    const pct = (100 * p).toFixed(1);
    li.innerHTML = `<span></span><span class="bar" role="meter" aria-valuemin="0" aria-valuemax="100"></span><span></span>`;
    li.children[0].textContent = name.replaceAll("_", " ");
    li.children[1].setAttribute("aria-valuenow", pct);
    li.children[1].setAttribute("aria-label", name);
    li.children[1].innerHTML = `<span style="width:${pct}%"></span>`;
    li.children[2].textContent = `${pct} %`;
    list.appendChild(li);
  }
  $("version").textContent = data.model_version;
  $("request-id").textContent = data.request_id;
  $("result").hidden = false;
  showSimilar(data);
}

function showSimilar(data) {
  const list = $("similar");
  list.replaceChildren();
  for (const item of data.similar) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "similar-choice";
    button.dataset.label = item.label;
    button.setAttribute("aria-label", `It is a ${item.label.replaceAll("_", " ")}`);
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = item.label;
    const caption = document.createElement("span");
    caption.textContent = item.label.replaceAll("_", " ");
    button.append(img, caption);
    button.addEventListener("click", () => sendFeedback(item.label));
    li.appendChild(button);
    list.appendChild(li);
  }
  const select = $("label-select");
  select.replaceChildren();
  for (const name of Object.keys(data.probabilities)) {
    const option = new Option(name.replaceAll("_", " "), name, false, name === data.label);
    select.add(option);
  }
  // The reserved label of /feedback (ml.records.NONE_OF_THESE): the image is none of our classes.
  select.add(new Option("None of these", NONE_OF_THESE));
  $("feedback").hidden = false;
}

async function sendFeedback(label) {
  if (!current) return;
  $("thanks").textContent = "Sending...";
  try {
    const response = await fetch("/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request_id: current.request_id, label, source: "web" }),
    });
    const data = await response.json();
    const said = label === NONE_OF_THESE ? "none of these" : label.replaceAll("_", " ");
    $("thanks").textContent = response.ok
      ? `Thank you: recorded "${said}" for this image.`
      : (data.error || `Error ${response.status}`);
  } catch (err) {
    $("thanks").textContent = `Could not send: ${err}`;
  }
}

function setup() {
  const zone = $("dropzone");
  $("file").addEventListener("change", (e) => e.target.files[0] && classify(e.target.files[0]));
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => e.dataTransfer.files[0] && classify(e.dataTransfer.files[0]));
  $("label-form").addEventListener("submit", (e) => { e.preventDefault(); sendFeedback($("label-select").value); });
}

setup();
