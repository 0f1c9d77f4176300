// coembed search page: plain JS, no build step. Talks only to this server's /api.
"use strict";
const form = document.getElementById("search-form");
const query = document.getElementById("query");
const upload = document.getElementById("upload");
const statusLine = document.getElementById("status");
const grid = document.getElementById("results");
const TOP = 24;

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

async function run(request, label) {
  setStatus("searching " + label + " ...", false);
  try {
    const response = await request;
    const body = await response.json();
    if (!response.ok) { throw new Error(body.error || response.statusText); }
    show(body.results);
    setStatus(body.results.length + " results for " + label + " (" + body.took_ms.toFixed(1) + " ms)", false);
  } catch (err) {
    grid.replaceChildren();
    setStatus("error: " + err.message, true);
  }
}

function show(results) {
  grid.replaceChildren(...results.map((hit, rank) => {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.id = hit.id;
    card.dataset.name = hit.name;
    card.dataset.rank = rank + 1;
    card.title = hit.path + "\nclick to find similar images";
    const img = document.createElement("img");
    img.src = hit.thumbnail + "?size=160";
    img.alt = hit.name;
    img.loading = "lazy";
    const name = document.createElement("figcaption");
    name.className = "name";
    name.textContent = hit.name;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = hit.score.toFixed(4);
    card.append(img, name, score);
    card.addEventListener("click", () => run(fetch("/api/similar/" + hit.id + "?top=" + TOP), "images like " + hit.name));
    return card;
  }));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = query.value.trim();
  if (!q) { setStatus("type a query first", true); return; }
  run(fetch("/api/search?top=" + TOP + "&q=" + encodeURIComponent(q)), JSON.stringify(q));
});

upload.addEventListener("change", () => {
  const file = upload.files[0];
  if (!file) { return; }
  const request = fetch("/api/search/image?top=" + TOP, {
    method: "POST", body: file, headers: {"Content-Type": file.type || "application/octet-stream"},
  });
  run(request, "image " + file.name);
  upload.value = "";
});
