// LaViA Live browser client: sends a camera (or the demo video) to the server over WebRTC
// and shows the guidance, answers and state events that come back on the `lavia` data
// channel; plays the assistant's voice from the audio track it receives (or speaks with the
// browser's own speech synthesis instead); sends the microphone for voice questions, either
// hands-free (the server finds where a question ends) or push-to-talk (only while a button or
// the Space bar is held); speaking, or a press, stops the assistant's voice (barge-in).
// Plain ES module, standard APIs only, no build step. Protocol version 1 (see the README):
// POST /offer with a complete (non-trickle) SDP offer, JSON events on the channel.

const PROTOCOL = 1;
const DEMO_SOURCE = "demo";
const DEMO_TASK = "demo_oil_change";
const DEMO_FPS = 5; // the server samples one frame a second; 5 fps is plenty
const ICE_GATHER_TIMEOUT_MS = 5000; // aiortc does not trickle: send what is gathered by then
const OFFER_TIMEOUT_MS = 20000;
const DISCONNECTED_GRACE_MS = 4000; // 'disconnected' often recovers by itself
const LIVE_TIMEOUT_MS = 30000; // from the offer to the server's hello
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10000;
const MAX_ANSWERS = 20;
const TOKEN_KEY = "lavia.token";
const SPEECH_KEY = "lavia.speech";
const NORMAL_WPM = 160; // the browser's rate 1.0
const MAX_SPEECH_LOG = 100;
// The microphone: the browser's own echo cancelling keeps the assistant's voice out of it.
const MIC_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const HANDS_FREE = "hands-free";
const PUSH_TO_TALK = "push-to-talk";
const MIC_HELP = {
  [HANDS_FREE]:
    "Mic on: just speak a question (hands-free); it is answered when you pause. " +
    "Speaking stops the assistant.",
  [PUSH_TO_TALK]:
    "Hold the button, or the Space bar (outside text fields), while you ask; release to " +
    "send. Pressing stops the assistant.",
};
const DEFAULT_CAPTURE = { width: 640, height: 480, frame_rate: 5, max_bitrate_kbps: 300 };

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  connectionText: $("connection-text"),
  setup: $("setup"),
  task: $("task"),
  source: $("source"),
  tokenField: $("token-field"),
  token: $("token"),
  start: $("start"),
  stop: $("stop"),
  demo: $("demo"),
  error: $("error"),
  errorText: $("error-text"),
  errorDismiss: $("error-dismiss"),
  preview: $("preview"),
  previewCaption: $("preview-caption"),
  status: $("status"),
  warning: $("warning"),
  warningText: $("warning-text"),
  warningDismiss: $("warning-dismiss"),
  guidance: $("guidance"),
  currentStep: $("current-step"),
  nextStep: $("next-step"),
  reset: $("reset"),
  progress: $("progress"),
  progressText: $("progress-text"),
  checklist: $("checklist"),
  ask: $("ask"),
  question: $("question"),
  askButton: $("ask-button"),
  answers: $("answers"),
  demoVideo: $("demo-video"),
  speechMute: $("speech-mute"),
  speechBrowser: $("speech-browser"),
  speechVoice: $("speech-voice"),
  speechRate: $("speech-rate"),
  speechRateValue: $("speech-rate-value"),
  speechCaption: $("speech-caption"),
  speechAudio: $("speech-audio"),
  mic: $("mic"),
  micLevel: $("mic-level"),
  micTranscript: $("mic-transcript"),
  micMode: $("mic-mode"),
  micHelp: $("mic-help"),
};

const app = {
  config: null,
  tasks: new Map(), // id -> {id, title, steps}
  running: false, // between the user's Start and Stop
  live: false, // the server said hello on the current channel
  media: null, // {stream, track, demo, stop()} of the source being sent
  pc: null,
  dc: null,
  sender: null,
  micSender: null, // the audio transceiver's sender: the microphone track, or none
  mic: null, // {stream, track, stop()} while the microphone is open
  talking: false, // push-to-talk: the button or the Space bar is held
  listening: null, // hello.listening: {model, max_utterance_s, gate_while_speaking} or null
  transcripts: [], // transcript events received, for tests
  generation: 0, // bumped on every teardown: events of an old peer are ignored
  retryDelay: RETRY_FIRST_MS,
  retryTimer: null,
  disconnectTimer: null,
  liveTimer: null,
  session: null,
  sessionTask: null, // {id, title, steps} the server is guiding
  progress: { done: new Set(), current: null },
  warning: null,
  answers: new Map(), // question id -> {li, text}
  // The person's voice settings (kept in this browser): server voice id, browser voice name.
  // talkMode: hands-free or push-to-talk.
  speech: {
    muted: false,
    browser: false,
    voice: "",
    browserVoice: "",
    rate: NORMAL_WPM,
    rateChosen: false, // false: the server's configured rate (speech.rate_wpm) is used
    talkMode: HANDS_FREE,
  },
  serverSpeech: null, // hello.speech: {engine, voices, voice, rate_wpm, muted} or null
  speechLog: [], // speech events received and texts spoken by the browser, for tests
};

class ServerError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------- start-up

async function init() {
  wireEvents();
  initSpeech();
  initMic();
  ui.token.value = readToken();
  try {
    const [config, library] = await Promise.all([getJson("/api/config"), getJson("/api/tasks")]);
    app.config = config;
    fillTasks(library);
    ui.tokenField.hidden = !config.auth;
    ui.demo.hidden = !config.demo_video;
    await fillSources();
    ui.start.disabled = false;
    setStatus("Not connected. Pick a task and a video source, then press Start.");
  } catch (err) {
    showError(
      `Could not load the task list from the server (${describe(err)}). ` +
        "Check that the server is running, then reload this page.",
    );
  }
}

async function getJson(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw await serverError(resp);
  return resp.json();
}

function fillTasks(library) {
  app.tasks.clear();
  const options = library.tasks.map((task) => {
    app.tasks.set(task.id, task);
    return new Option(task.title, task.id);
  });
  ui.task.replaceChildren(...options);
  const preferred = library.default_task;
  if (preferred && app.tasks.has(preferred)) ui.task.value = preferred;
  ui.task.disabled = options.length === 0;
  showTaskPreview();
}

// Camera list: labels (and real device ids) are given only after camera permission, so
// the list is filled again once a camera has been opened.
async function fillSources(selectDeviceId) {
  const keep = selectDeviceId ?? ui.source.value;
  const options = [];
  let cameras = [];
  if (navigator.mediaDevices?.enumerateDevices) {
    try {
      cameras = (await navigator.mediaDevices.enumerateDevices()).filter(
        (d) => d.kind === "videoinput",
      );
    } catch {
      cameras = [];
    }
  }
  const labelled = cameras.filter((d) => d.deviceId && d.label);
  if (labelled.length) {
    labelled.forEach((d, i) => options.push(new Option(d.label || `Camera ${i + 1}`, d.deviceId)));
  } else if (cameras.length || navigator.mediaDevices?.getUserMedia) {
    options.push(new Option("Default camera", ""));
  }
  if (app.config?.demo_video) options.push(new Option("Demo video (oil change)", DEMO_SOURCE));
  ui.source.replaceChildren(...options);
  const values = options.map((o) => o.value);
  if (values.includes(keep)) ui.source.value = keep;
  else if (!cameras.length && values.includes(DEMO_SOURCE)) ui.source.value = DEMO_SOURCE;
}

function wireEvents() {
  ui.setup.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  ui.stop.addEventListener("click", () => stop());
  ui.demo.addEventListener("click", () => useDemo());
  ui.task.addEventListener("change", () => changeTask());
  ui.source.addEventListener("change", () => {
    if (app.running) switchSource();
  });
  ui.token.addEventListener("change", () => saveToken(ui.token.value.trim()));
  ui.reset.addEventListener("click", () => {
    if (send({ type: "reset" })) clearGuidance("Starting over…");
  });
  ui.errorDismiss.addEventListener("click", () => {
    clearError();
    (ui.start.disabled ? ui.stop : ui.start).focus();
  });
  ui.warningDismiss.addEventListener("click", () => {
    hideWarning();
    ui.guidance.focus();
  });
  ui.ask.addEventListener("submit", (event) => {
    event.preventDefault();
    askQuestion();
  });
  navigator.mediaDevices?.addEventListener?.("devicechange", () => fillSources());
  // Leaving the page ends the session and frees the camera (also for the back-forward cache).
  window.addEventListener("pagehide", () => {
    if (app.running) stop();
  });
}

// ---------------------------------------------------------------- start / stop

async function start() {
  if (app.running) return;
  clearError();
  const task = ui.task.value;
  if (!app.tasks.has(task)) {
    showError("Pick a task first.");
    return;
  }
  if (!ui.tokenField.hidden) saveToken(ui.token.value.trim());
  app.running = true;
  app.retryDelay = RETRY_FIRST_MS;
  updateButtons();
  setConnection("connecting");
  try {
    app.media = await openSource(ui.source.value);
  } catch (err) {
    if (!app.running) return; // stopped meanwhile
    stop();
    showError(describeMediaError(err));
    return;
  }
  if (!app.running) {
    closeSource();
    return;
  }
  showPreview();
  connect();
}

function stop() {
  talkEnd();
  app.running = false;
  clearTimeout(app.retryTimer);
  app.retryTimer = null;
  teardownPeer();
  closeSource();
  micOff();
  app.session = null;
  delete ui.connection.dataset.session;
  setConnection("stopped");
  setStatus("Not connected.");
  updateButtons();
  showTaskPreview(); // the next Start is a new session: its progress starts over
}

function useDemo() {
  if (!app.config?.demo_video) return;
  ui.source.value = DEMO_SOURCE;
  if (app.tasks.has(DEMO_TASK) && ui.task.value !== DEMO_TASK) {
    ui.task.value = DEMO_TASK;
    changeTask();
  }
  if (app.running) switchSource();
  else start();
}

function changeTask() {
  const task = ui.task.value;
  if (app.running && app.live) {
    send({ type: "task", task });
    app.sessionTask = null;
    clearGuidance("Switching task…");
  } else if (!app.running) {
    showTaskPreview();
  }
  // While connecting, the next offer carries the selected task.
}

function updateButtons() {
  ui.start.disabled = app.running || !app.tasks.size;
  ui.stop.disabled = !app.running;
  const canTalk = app.running && app.live;
  ui.question.disabled = !canTalk;
  ui.askButton.disabled = !canTalk;
  ui.reset.disabled = !canTalk;
  ui.mic.disabled = !app.running && !app.mic && !app.talking;
}

// ---------------------------------------------------------------- video sources

async function openSource(value) {
  if (value === DEMO_SOURCE) return openDemo();
  return openCamera(value);
}

async function openCamera(deviceId) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new DOMException(
      "Camera access needs a secure page (https:// or localhost).",
      "SecurityError",
    );
  }
  const capture = { ...DEFAULT_CAPTURE, ...(app.config?.capture ?? {}) };
  const video = {
    width: { ideal: capture.width },
    height: { ideal: capture.height },
    frameRate: { ideal: capture.frame_rate, max: Math.max(10, capture.frame_rate) },
  };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: deviceId ? { ...video, deviceId: { exact: deviceId } } : video,
      audio: false,
    });
  } catch (err) {
    // A camera that was unplugged since the list was made: fall back to the default one.
    if (!deviceId || !["OverconstrainedError", "NotFoundError"].includes(err.name)) throw err;
    stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  }
  const track = stream.getVideoTracks()[0];
  await fillSources(track.getSettings().deviceId || deviceId);
  return {
    stream,
    track,
    demo: false,
    stop: () => stream.getTracks().forEach((t) => t.stop()),
  };
}

// The demo source: the demo video plays (muted, looped) in a hidden <video>, is drawn onto a
// canvas and the canvas stream goes through the same WebRTC path as a camera.
async function openDemo() {
  const video = ui.demoVideo;
  video.src = app.config.demo_video;
  video.muted = true;
  video.loop = true;
  video.currentTime = 0;
  await video.play();
  if (!video.videoWidth) await once(video, "loadedmetadata");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  const draw = () => context.drawImage(video, 0, 0, canvas.width, canvas.height);
  draw();
  const timer = setInterval(draw, 1000 / DEMO_FPS);
  const stream = canvas.captureStream(DEMO_FPS);
  return {
    stream,
    track: stream.getVideoTracks()[0],
    demo: true,
    stop: () => {
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
      video.pause();
      video.removeAttribute("src");
      video.load();
    },
  };
}

function closeSource() {
  if (app.media) app.media.stop();
  app.media = null;
  ui.preview.srcObject = null;
  ui.previewCaption.textContent = "Preview of what is being sent";
}

function showPreview() {
  const media = app.media;
  ui.preview.srcObject = media.stream;
  ui.preview.play().catch(() => {});
  ui.previewCaption.textContent = media.demo
    ? "Sending the demo video"
    : `Sending: ${media.track.label || "camera"}`;
  media.track.addEventListener("ended", () => {
    if (app.media !== media || !app.running) return;
    stop();
    showError("The camera stopped sending video (was it unplugged or taken by another app?).");
  });
}

// Change the source while connected: the new track replaces the old one on the same sender.
async function switchSource() {
  clearError();
  let media;
  try {
    media = await openSource(ui.source.value);
  } catch (err) {
    showError(describeMediaError(err));
    return;
  }
  if (!app.running) {
    media.stop();
    return;
  }
  const old = app.media;
  app.media = media;
  showPreview();
  if (app.sender) {
    try {
      await app.sender.replaceTrack(media.track);
    } catch {
      scheduleReconnect("the new video source needs a new connection");
    }
  }
  if (old) old.stop();
}

function once(target, name) {
  return new Promise((resolve) => target.addEventListener(name, resolve, { once: true }));
}

// ---------------------------------------------------------------- WebRTC

async function connect() {
  const generation = ++app.generation;
  const stale = () => generation !== app.generation || !app.running;
  app.live = false;
  updateButtons();
  setConnection(app.session ? "reconnecting" : "connecting");
  // A peer that is not live in time (ICE that never completes) is replaced.
  app.liveTimer = setTimeout(() => {
    if (!stale() && !app.live) scheduleReconnect("the connection could not be established");
  }, LIVE_TIMEOUT_MS);
  try {
    const pc = openPeer(stale);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, ICE_GATHER_TIMEOUT_MS);
    if (stale()) return;
    const answer = await postOffer(pc.localDescription, ui.task.value);
    if (stale()) return;
    app.session = answer.session;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  } catch (err) {
    if (stale()) return;
    onConnectFailed(err);
  }
}

// The peer connection with the video track (sendonly) and the `lavia` data channel, both
// added before the offer is made.
function openPeer(stale) {
  const pc = new RTCPeerConnection({ iceServers: app.config.ice_servers ?? [] });
  app.pc = pc;
  // The assistant looks at one small frame a second: a capped bitrate keeps the picture
  // sharp enough for it and costs the server (and the uplink) a third of an uncapped one.
  const capture = { ...DEFAULT_CAPTURE, ...(app.config?.capture ?? {}) };
  const transceiver = pc.addTransceiver(app.media.track, {
    direction: "sendonly",
    streams: [app.media.stream],
    sendEncodings: [{ maxBitrate: capture.max_bitrate_kbps * 1000 }],
  });
  app.sender = transceiver.sender;
  // One audio transceiver both ways: the assistant's voice comes back on it, and it sends
  // the microphone while it is on (replaceTrack, no new offer). The video source never
  // sends audio of its own: the demo video's narration must not become a question.
  const audio = pc.addTransceiver(micTrackToSend() ?? "audio", { direction: "sendrecv" });
  app.micSender = audio.sender;
  pc.addEventListener("track", (event) => {
    if (!stale() && event.track.kind === "audio") playVoice(event.track);
  });
  const dc = pc.createDataChannel("lavia");
  app.dc = dc;
  dc.addEventListener("message", (event) => {
    if (!stale()) onMessage(event.data);
  });
  dc.addEventListener("close", () => {
    if (!stale()) scheduleReconnect("the connection to the server closed");
  });
  pc.addEventListener("connectionstatechange", () => {
    if (!stale()) onConnectionState(pc.connectionState);
  });
  return pc;
}

function iceGatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onState);
      pc.removeEventListener("icecandidate", onCandidate);
      resolve();
    };
    const onState = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const onCandidate = (event) => {
      if (!event.candidate) finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    pc.addEventListener("icegatheringstatechange", onState);
    pc.addEventListener("icecandidate", onCandidate);
  });
}

async function postOffer(offer, task) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const token = ui.tokenField.hidden ? "" : ui.token.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), OFFER_TIMEOUT_MS);
  try {
    const resp = await fetch("/offer", {
      method: "POST",
      headers,
      body: JSON.stringify({ sdp: offer.sdp, type: offer.type, task }),
      signal: abort.signal,
    });
    if (!resp.ok) throw await serverError(resp);
    const answer = await resp.json();
    if (answer.type !== "answer" || typeof answer.sdp !== "string") {
      throw new ServerError(resp.status, "bad_answer", "The server sent an unusable answer.");
    }
    return answer;
  } finally {
    clearTimeout(timer);
  }
}

async function serverError(resp) {
  let code = "http_" + resp.status;
  let message = "";
  try {
    const body = await resp.json();
    if (body?.error) {
      code = body.error.code || code;
      message = body.error.message || "";
    }
  } catch {
    // not JSON: the status says enough
  }
  return new ServerError(resp.status, code, message || `HTTP ${resp.status} ${resp.statusText}`);
}

function onConnectFailed(err) {
  if (err instanceof ServerError) {
    const fatal = [400, 401, 403, 404, 413].includes(err.status);
    if (fatal) {
      stop();
      showError(describeOfferError(err));
      if (err.status === 401) {
        ui.tokenField.hidden = false;
        ui.token.focus();
      }
      return;
    }
  }
  scheduleReconnect(describeOfferError(err));
}

function onConnectionState(state) {
  clearTimeout(app.disconnectTimer);
  app.disconnectTimer = null;
  if (state === "connected") {
    if (app.live) setConnection("live");
  } else if (state === "disconnected") {
    setConnection("reconnecting", "Connection unstable…");
    app.disconnectTimer = setTimeout(
      () => scheduleReconnect("the network connection dropped"),
      DISCONNECTED_GRACE_MS,
    );
  } else if (state === "failed") {
    scheduleReconnect("the network connection failed");
  }
}

function scheduleReconnect(reason) {
  if (!app.running || app.retryTimer) return;
  teardownPeer();
  const delay = app.retryDelay;
  app.retryDelay = Math.min(delay * 2, RETRY_MAX_MS);
  const seconds = Math.round(delay / 1000);
  setConnection("reconnecting", `Reconnecting in ${seconds} s…`);
  setStatus(`Lost the server: ${reason}. Trying again in ${seconds} s.`);
  app.retryTimer = setTimeout(() => {
    app.retryTimer = null;
    if (app.running) connect();
  }, delay);
}

function teardownPeer() {
  app.generation++;
  app.live = false;
  stopVoice();
  ui.speechAudio.srcObject = null;
  clearTimeout(app.disconnectTimer);
  clearTimeout(app.liveTimer);
  app.disconnectTimer = null;
  app.liveTimer = null;
  if (app.dc) app.dc.close();
  if (app.pc) app.pc.close();
  app.dc = null;
  app.pc = null;
  app.sender = null;
  app.micSender = null;
  updateButtons();
}

function send(message) {
  if (!app.dc || app.dc.readyState !== "open") return false;
  app.dc.send(JSON.stringify(message));
  return true;
}

// ---------------------------------------------------------------- server events

function onMessage(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  switch (msg?.type) {
    case "hello":
      return onHello(msg);
    case "task":
      return onTask(msg.task);
    case "guidance":
      return onGuidance(msg);
    case "answer":
      return onAnswer(msg);
    case "state":
      return onState(msg);
    case "speech":
      return onSpeech(msg);
    case "transcript":
      return onTranscript(msg);
    case "error":
      return onServerEvent(msg);
    default:
      return undefined; // newer servers may send more kinds of events
  }
}

function onHello(msg) {
  if (msg.protocol !== PROTOCOL) {
    showError(`This page speaks protocol ${PROTOCOL} but the server speaks ${msg.protocol}.`);
  }
  app.live = true;
  clearTimeout(app.liveTimer);
  app.liveTimer = null;
  app.retryDelay = RETRY_FIRST_MS;
  app.session = msg.session;
  ui.connection.dataset.session = msg.session ?? "";
  setConnection("live");
  setStatus(`Connected (model: ${msg.engine}). Waiting for the first frames…`);
  updateButtons();
  const sameTask = app.sessionTask?.id === msg.task.id;
  app.sessionTask = msg.task;
  if (ui.task.value !== msg.task.id) {
    // The task was changed while reconnecting: tell the new session.
    if (app.tasks.has(ui.task.value)) send({ type: "task", task: ui.task.value });
  }
  if (!sameTask) clearGuidance("Watching… the first guidance comes after a few seconds.");
  else renderChecklist();
  app.serverSpeech = msg.speech ?? null;
  if (app.serverSpeech && !app.speech.rateChosen) {
    // until the person moves the slider, the voice speaks at the rate the server is set to
    app.speech.rate = app.serverSpeech.rate_wpm;
    ui.speechRate.value = String(app.speech.rate);
    renderSpeechControls();
  }
  app.listening = msg.listening ?? null;
  if (app.mic && !app.listening) showMicText("The server is not listening: type your question.", "idle");
  fillVoices();
  sendSpeechSettings();
}

function onTask(task) {
  app.sessionTask = task;
  if (app.tasks.has(task.id)) ui.task.value = task.id;
  clearGuidance("Watching… the first guidance comes after a few seconds.");
}

function onGuidance(g) {
  ui.currentStep.textContent = g.current_step;
  ui.nextStep.textContent = g.next_step;
  ui.guidance.dataset.currentIndex = g.current_index ?? "";
  ui.guidance.dataset.nextIndex = g.next_index ?? "";
  ui.guidance.dataset.complete = String(g.next_index === null && g.current_index !== null);
  app.progress = { done: new Set(g.done ?? []), current: g.current_index ?? null };
  renderChecklist();
  if (g.warning) showWarning(g.warning);
  speakLocally(guidanceText(g));
}

function onAnswer(msg) {
  let entry = app.answers.get(msg.id);
  if (!entry) entry = addAnswer(msg.id, null);
  if (msg.final) {
    entry.text.textContent = (msg.text ?? entry.text.textContent).trim();
    entry.li.removeAttribute("aria-busy");
    entry.li.dataset.final = "true";
    speakLocally(entry.text.textContent);
  } else if (typeof msg.delta === "string") {
    const text = entry.li.dataset.waiting ? msg.delta.trimStart() : msg.delta;
    if (!text) return; // leading whitespace: keep "Thinking…" until words arrive
    if (entry.li.dataset.waiting) {
      entry.text.textContent = "";
      delete entry.li.dataset.waiting;
    }
    entry.text.textContent += text;
  }
}

function onState(s) {
  const parts = [
    `Frames: ${s.frames_received} received, ${s.frames_sampled} sampled`,
    s.model_busy ? "model working" : "model idle",
  ];
  if (typeof s.last_latency_ms === "number") {
    parts.push(`last answer ${Math.round(s.last_latency_ms)} ms`);
  }
  if (s.tokens) {
    parts.push(`${s.tokens.prompt + s.tokens.completion} tokens`);
  }
  if (typeof s.cost_usd === "number") {
    parts.push(`$${s.cost_usd.toFixed(4)}`);
  }
  setStatus(parts.join(" · "));
}

function onServerEvent(msg) {
  const text = msg.message || `The server reported a problem (${msg.code}).`;
  const entry = msg.id ? app.answers.get(msg.id) : null;
  if (entry) {
    entry.text.textContent = `Could not answer: ${text}`;
    entry.li.classList.add("failed");
    entry.li.removeAttribute("aria-busy");
    delete entry.li.dataset.waiting;
  } else {
    showError(text);
  }
}

// ---------------------------------------------------------------- voice

function initSpeech() {
  app.speech = { ...app.speech, ...readSpeech() };
  ui.speechRate.value = String(app.speech.rate);
  ui.speechBrowser.checked = app.speech.browser;
  renderSpeechControls();
  fillVoices();
  ui.speechMute.addEventListener("click", () => {
    app.speech.muted = !app.speech.muted;
    if (app.speech.muted) stopVoice();
    applySpeech();
  });
  ui.speechBrowser.addEventListener("change", () => {
    app.speech.browser = ui.speechBrowser.checked;
    stopVoice();
    fillVoices();
    applySpeech();
  });
  ui.speechVoice.addEventListener("change", () => {
    if (app.speech.browser) app.speech.browserVoice = ui.speechVoice.value;
    else app.speech.voice = ui.speechVoice.value;
    applySpeech();
  });
  ui.speechRate.addEventListener("input", () => {
    ui.speechRateValue.textContent = ui.speechRate.value;
  });
  ui.speechRate.addEventListener("change", () => {
    app.speech.rate = Number(ui.speechRate.value);
    app.speech.rateChosen = true;
    applySpeech();
  });
  window.speechSynthesis?.addEventListener?.("voiceschanged", () => {
    if (app.speech.browser) fillVoices();
  });
}

function applySpeech() {
  saveSpeech();
  renderSpeechControls();
  sendSpeechSettings();
}

function renderSpeechControls() {
  const { muted } = app.speech;
  ui.speechMute.setAttribute("aria-pressed", String(muted));
  ui.speechMute.textContent = muted ? "Unmute voice" : "Mute voice";
  ui.speechRateValue.textContent = String(app.speech.rate);
  // The audio element is muted at once; the server stops sending speech as well.
  ui.speechAudio.muted = muted || app.speech.browser;
  ui.speechBrowser.disabled = !window.speechSynthesis;
}

// The voice list: the server's voices (from hello), or this browser's when it speaks.
function fillVoices() {
  let options;
  let selected;
  if (app.speech.browser) {
    const voices = window.speechSynthesis?.getVoices?.() ?? [];
    const english = voices.filter((v) => v.lang?.startsWith("en"));
    options = [new Option("Browser default", "")];
    for (const v of english.length ? english : voices) {
      options.push(new Option(`${v.name} (${v.lang})`, v.name));
    }
    selected = app.speech.browserVoice;
  } else if (app.serverSpeech) {
    options = app.serverSpeech.voices.map((v) => new Option(v.label, v.id));
    const known = app.serverSpeech.voices.some((v) => v.id === app.speech.voice);
    selected = known ? app.speech.voice : app.serverSpeech.voice;
  } else {
    options = [new Option("Server default", "")];
    selected = "";
  }
  ui.speechVoice.replaceChildren(...options);
  if (options.some((o) => o.value === selected)) ui.speechVoice.value = selected;
}

// Tell the server how this session should sound; muted while the browser speaks instead.
function sendSpeechSettings() {
  const server = app.serverSpeech;
  if (!server || !app.live) return;
  const message = { type: "speech", muted: app.speech.muted || app.speech.browser };
  if (app.speech.rate !== server.rate_wpm) message.rate = app.speech.rate;
  if (server.voices.some((v) => v.id === app.speech.voice)) message.voice = app.speech.voice;
  send(message);
}

function playVoice(track) {
  ui.speechAudio.srcObject = new MediaStream([track]);
  ui.speechAudio.muted = app.speech.muted || app.speech.browser;
  // Autoplay is allowed after the Start click; if a browser still refuses, the text remains.
  ui.speechAudio.play().catch(() => {});
}

function stopVoice() {
  window.speechSynthesis?.cancel();
  showCaption(null);
}

function onSpeech(msg) {
  const { state, text, kind, id } = msg;
  logSpeech({ type: "speech", state, text, kind, id, interrupted: Boolean(msg.interrupted) });
  if (msg.state === "start") showCaption(msg.text);
  else if (ui.speechCaption.textContent === msg.text) showCaption(null);
}

function showCaption(text) {
  ui.speechCaption.textContent = text ?? "";
  ui.speechCaption.dataset.speaking = String(Boolean(text));
}

function logSpeech(entry) {
  app.speechLog.push({ ...entry, t: performance.now() });
  if (app.speechLog.length > MAX_SPEECH_LOG) app.speechLog.shift();
}

// The same words the server says for a guidance: a warning first, then the next step.
function guidanceText(g) {
  const parts = [];
  const sentence = (text) => (/[.!?]$/.test(text.trim()) ? text.trim() : `${text.trim()}.`);
  if (g.warning) parts.push(sentence(`Warning: ${g.warning}`));
  if (g.next_step?.trim() && g.next_index !== null) parts.push(sentence(`Next: ${g.next_step}`));
  else if (g.current_step?.trim()) parts.push(sentence(`Now: ${g.current_step}`));
  return parts.join(" ");
}

function speakLocally(text) {
  const synth = window.speechSynthesis;
  if (!app.speech.browser || app.speech.muted || !synth || !text?.trim()) return;
  const utterance = new SpeechSynthesisUtterance(text.trim());
  utterance.rate = Math.min(3, Math.max(0.5, app.speech.rate / NORMAL_WPM));
  const voice = synth.getVoices().find((v) => v.name === app.speech.browserVoice);
  if (voice) utterance.voice = voice;
  utterance.addEventListener("start", () => showCaption(utterance.text));
  utterance.addEventListener("end", () => {
    if (ui.speechCaption.textContent === utterance.text) showCaption(null);
  });
  logSpeech({ type: "browser", state: "queued", text: utterance.text });
  synth.speak(utterance);
}

function readSpeech() {
  try {
    const saved = JSON.parse(localStorage.getItem(SPEECH_KEY) ?? "{}");
    return typeof saved === "object" && saved ? saved : {};
  } catch {
    return {};
  }
}

function saveSpeech() {
  try {
    localStorage.setItem(SPEECH_KEY, JSON.stringify(app.speech));
  } catch {
    // storage disabled: the settings hold for this page only
  }
}

// ---------------------------------------------------------------- microphone

function initMic() {
  if (![HANDS_FREE, PUSH_TO_TALK].includes(app.speech.talkMode)) app.speech.talkMode = HANDS_FREE;
  ui.micMode.value = app.speech.talkMode;
  ui.micMode.addEventListener("change", () => {
    talkEnd();
    micOff();
    app.speech.talkMode = ui.micMode.value;
    saveSpeech();
    renderMic();
  });
  // Hands-free: a click turns the microphone on or off. Push-to-talk: held, not clicked.
  ui.mic.addEventListener("click", () => {
    if (pushToTalk()) return;
    if (app.mic) micOff();
    else micOn();
  });
  ui.mic.addEventListener("pointerdown", (event) => {
    if (!pushToTalk() || event.button !== 0) return;
    ui.mic.setPointerCapture?.(event.pointerId); // released anywhere still counts
    talkStart();
  });
  for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
    ui.mic.addEventListener(name, () => talkEnd());
  }
  // The Space bar talks anywhere on the page except in a field it types or acts in.
  window.addEventListener("keydown", (event) => {
    if (event.code !== "Space" || !pushToTalk() || !app.running || usesSpace(event.target)) {
      return;
    }
    event.preventDefault();
    if (!event.repeat) talkStart();
  });
  window.addEventListener("keyup", (event) => {
    if (event.code !== "Space" || !app.talking) return;
    event.preventDefault();
    talkEnd();
  });
  window.addEventListener("blur", () => talkEnd()); // its key-up would never come
  renderMic();
}

function pushToTalk() {
  return app.speech.talkMode === PUSH_TO_TALK;
}

function usesSpace(target) {
  return Boolean(target?.closest?.("input, textarea, select, [contenteditable]"));
}

// The track the audio transceiver sends: the microphone while it is on (hands-free) or held.
function micTrackToSend() {
  if (!app.mic || (pushToTalk() && !app.talking)) return null;
  return app.mic.track;
}

async function attachMic() {
  if (!app.micSender) return;
  const track = micTrackToSend();
  try {
    await app.micSender.replaceTrack(track);
  } catch {
    if (track) scheduleReconnect("the microphone needs a new connection");
  }
}

// Opens the microphone once (its level meter runs while it is open); null when it cannot be.
async function openMic() {
  if (app.mic) return app.mic;
  if (!navigator.mediaDevices?.getUserMedia) {
    showError("The microphone needs a secure page (https:// or localhost).");
    return null;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: MIC_CONSTRAINTS, video: false });
  } catch (err) {
    showError(describeMediaError(err, MIC));
    return null;
  }
  if (app.mic) {
    // opened twice at once (a click and a key): keep the first
    stream.getTracks().forEach((t) => t.stop());
    return app.mic;
  }
  const track = stream.getAudioTracks()[0];
  const meter = levelMeter(stream);
  app.mic = {
    stream,
    track,
    stop: () => {
      meter.stop();
      stream.getTracks().forEach((t) => t.stop());
    },
  };
  track.addEventListener("ended", () => {
    if (app.mic?.track !== track) return;
    talkEnd();
    micOff();
    showError("The microphone stopped (was it unplugged or taken by another app?).");
  });
  return app.mic;
}

async function micOn() {
  const mic = await openMic();
  if (!mic || pushToTalk()) return;
  renderMic();
  showMicText(app.listening || !app.live ? "Listening…" : "The server is not listening.", "idle");
  await attachMic();
}

function micOff() {
  const mic = app.mic;
  if (!mic) return;
  app.mic = null;
  if (app.micSender) app.micSender.replaceTrack(null).catch(() => {});
  mic.stop();
  renderMic();
  showMicText("", "idle");
}

// Push-to-talk pressed: the assistant stops at once (the server drops the rest of what it
// was saying; what is still on its way is not played), then the microphone is sent.
async function talkStart() {
  if (app.talking || !app.running || !pushToTalk()) return;
  app.talking = true;
  send({ type: "talk", state: "start" });
  stopVoice();
  ui.speechAudio.muted = true;
  renderMic();
  const mic = await openMic();
  if (!mic || !app.talking) return; // failed, or released while it opened
  showMicText(app.listening || !app.live ? "Listening…" : "The server is not listening.", "idle");
  await attachMic();
}

// Released: the microphone is no longer sent and the server transcribes the question now.
function talkEnd() {
  if (!app.talking) return;
  app.talking = false;
  attachMic();
  send({ type: "talk", state: "end" });
  ui.speechAudio.muted = app.speech.muted || app.speech.browser;
  renderMic();
}

function renderMic() {
  const ptt = pushToTalk();
  const on = ptt ? app.talking : Boolean(app.mic);
  ui.mic.dataset.mode = app.speech.talkMode;
  ui.mic.setAttribute("aria-pressed", String(on));
  if (ptt) ui.mic.textContent = on ? "Talking… (release to send)" : "Hold to talk";
  else ui.mic.textContent = on ? "Mic on" : "Mic off";
  ui.micHelp.textContent = MIC_HELP[app.speech.talkMode];
  ui.micLevel.hidden = !on;
  updateButtons();
}

// The microphone's level while it is on: the RMS of what the browser captures, once a frame.
function levelMeter(stream) {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return { stop() {} };
  const context = new Context();
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let frame = 0;
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    ui.micLevel.value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
    frame = requestAnimationFrame(draw);
  };
  draw();
  return {
    stop() {
      cancelAnimationFrame(frame);
      ui.micLevel.value = 0;
      context.close().catch(() => {});
    },
  };
}

// What the server heard: partial while the person speaks, then final (asked as a question
// with the same id, so its answer lands in the same entry).
function onTranscript(msg) {
  app.transcripts.push({ id: msg.id, final: msg.final, text: msg.text, ended: msg.ended ?? null });
  if (app.transcripts.length > MAX_SPEECH_LOG) app.transcripts.shift();
  // The person is talking: the browser's own voice stops too (the server's stopped already).
  if (app.speech.browser && !msg.final) stopVoice();
  if (!msg.final) {
    showMicText(msg.text, "partial");
  } else if (msg.text) {
    showMicText(msg.text, "final");
    if (!app.answers.has(msg.id)) addAnswer(msg.id, msg.text);
  } else {
    showMicText(app.mic ? "Listening…" : "", "idle");
  }
}

function showMicText(text, state) {
  ui.micTranscript.textContent = text;
  ui.micTranscript.dataset.state = state;
}

// ---------------------------------------------------------------- questions

function askQuestion() {
  const text = ui.question.value.trim();
  if (!text) {
    ui.question.focus();
    return;
  }
  const id = newId();
  if (!send({ type: "question", text: text.slice(0, 500), id })) {
    showError("Not connected: press Start first, then ask.");
    return;
  }
  addAnswer(id, text);
  ui.question.value = "";
}

function addAnswer(id, question) {
  const li = document.createElement("li");
  li.className = "answer";
  li.setAttribute("aria-busy", "true");
  li.dataset.waiting = "true";
  const q = document.createElement("p");
  q.className = "q";
  q.textContent = question ?? "Question";
  const a = document.createElement("p");
  a.className = "a";
  a.textContent = "Thinking…";
  li.append(q, a);
  ui.answers.prepend(li);
  const entry = { li, text: a };
  app.answers.set(id, entry);
  while (ui.answers.children.length > MAX_ANSWERS) ui.answers.lastElementChild.remove();
  for (const [key, value] of app.answers) {
    if (!value.li.isConnected) app.answers.delete(key);
  }
  return entry;
}

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

// ---------------------------------------------------------------- rendering

function showTaskPreview() {
  app.sessionTask = null;
  clearGuidance("Press Start, or try the demo video.");
}

function currentSteps() {
  return app.sessionTask?.steps ?? app.tasks.get(ui.task.value)?.steps ?? [];
}

function clearGuidance(message) {
  ui.currentStep.textContent = message;
  ui.nextStep.textContent = "—";
  ui.guidance.dataset.currentIndex = "";
  ui.guidance.dataset.nextIndex = "";
  ui.guidance.dataset.complete = "false";
  app.progress = { done: new Set(), current: null };
  hideWarning();
  renderChecklist();
}

function renderChecklist() {
  const steps = currentSteps();
  const { done, current } = app.progress;
  const items = steps.map((text, i) => {
    const state = i === current ? "current" : done.has(i) ? "done" : "upcoming";
    const li = document.createElement("li");
    li.className = state;
    li.dataset.state = state;
    if (state === "current") li.setAttribute("aria-current", "step");
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = state === "done" ? "✓" : String(i + 1);
    const label = document.createElement("span");
    label.className = "text";
    label.textContent = text;
    const spoken = document.createElement("span");
    spoken.className = "visually-hidden";
    spoken.textContent = ` (${state === "current" ? "in progress" : state})`;
    label.append(spoken);
    li.append(mark, label);
    return li;
  });
  ui.checklist.replaceChildren(...items);
  const count = steps.filter((_, i) => done.has(i) && i !== current).length;
  ui.progress.max = Math.max(steps.length, 1);
  ui.progress.value = count;
  ui.progressText.textContent = `${count} of ${steps.length} steps done`;
}

function showWarning(text) {
  app.warning = text;
  ui.warningText.textContent = text;
  ui.warning.hidden = false;
}

function hideWarning() {
  app.warning = null;
  ui.warning.hidden = true;
}

const CONNECTION_TEXT = {
  stopped: "Stopped",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
};

function setConnection(state, text) {
  ui.connection.dataset.state = state;
  ui.connectionText.textContent = text ?? CONNECTION_TEXT[state];
}

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.errorText.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.errorText.textContent = "";
}

// ---------------------------------------------------------------- plain-word errors

function describe(err) {
  if (err instanceof ServerError) return err.message;
  if (err?.name === "AbortError") return "the server did not answer in time";
  if (err instanceof TypeError) return "the server cannot be reached";
  return err?.message || String(err);
}

function describeOfferError(err) {
  if (!(err instanceof ServerError)) return describe(err);
  switch (err.code) {
    case "unauthorized":
      return "The server needs a valid access token. Enter it in the Access token field and press Start.";
    case "unknown_task":
      return (
        `The server does not know the task "${ui.task.value}". ` +
        "Reload the page for its current task list, then pick a task."
      );
    case "server_full":
      return "the server is busy (too many people are connected)";
    case "too_large":
      return `The connection offer was too large for the server (${err.message}).`;
    case "bad_sdp":
    case "bad_json":
    case "bad_request":
      return `The server could not use this browser's connection offer: ${err.message}`;
    default:
      if (err.status >= 500) return `the server had a problem (${err.message})`;
      return `The server refused the connection: ${err.message}`;
  }
}

// What the person can do instead, by device: the camera (the demo video) or the microphone.
const CAMERA = { name: "camera", Name: "Camera", instead: "try the demo video" };
const MIC = { name: "microphone", Name: "Microphone", instead: "type your question" };

function describeMediaError(err, device = CAMERA) {
  const { name, Name, instead } = device;
  switch (err?.name) {
    case "NotAllowedError":
      return `${Name} access was blocked. Allow the ${name} for this page in the browser, or ${instead}.`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `No ${name} was found. Connect one, or ${instead}.`;
    case "NotReadableError":
    case "AbortError":
      return `The ${name} could not be started (another app may be using it).`;
    case "SecurityError":
      return `${Name} access needs a secure page: open it over https:// (or on localhost), or ${instead}.`;
    case "NotSupportedError":
      return "This video could not be played in this browser.";
    default:
      return device === CAMERA
        ? `The video source could not be started: ${err?.message || err}`
        : `The ${name} could not be started: ${err?.message || err}`;
  }
}

function readToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return "";
  }
}

function saveToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token is used for this page only
  }
}

// For tests and the console: simulate a network drop (the data channel closes under us).
window.laviaLive = {
  dropConnection() {
    if (app.dc) app.dc.close();
  },
  // Speech events received and texts given to the browser's speech synthesis, oldest first.
  speechLog() {
    return app.speechLog.slice();
  },
  // Whether the microphone is being sent now (hands-free on, or push-to-talk held).
  micSending() {
    return Boolean(app.micSender?.track);
  },
  // Transcript events received (what the server heard from the microphone), oldest first.
  transcripts() {
    return app.transcripts.slice();
  },
  // The received voice's WebRTC statistics (inbound-rtp audio), or null.
  async audioStats() {
    if (!app.pc) return null;
    const stats = await app.pc.getStats();
    for (const report of stats.values()) {
      if (report.type === "inbound-rtp" && report.kind === "audio") {
        return {
          packetsReceived: report.packetsReceived ?? 0,
          totalAudioEnergy: report.totalAudioEnergy ?? 0,
          totalSamplesReceived: report.totalSamplesReceived ?? 0,
        };
      }
    }
    return null;
  },
};

init();
