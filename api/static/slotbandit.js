/*! slotbandit.js: decisions for page slots, with honest activation and reward beacons. No dependencies.
 *
 * <div data-slotbandit-slot="home.hero"></div>
 * <template data-slotbandit-block="b1">...</template>        (optional: markup per block id)
 * <script src="https://HOST/static/slotbandit.js" data-key="DECIDE_KEY" defer></script>
 *
 * Script attributes: data-key (a decide-scope key), data-base (API origin; default: the script's origin),
 * data-unit (unit id; default: a random id kept in localStorage), data-consent="false" (no unit, default block).
 * Element attributes: data-slotbandit-slot, data-slotbandit-click-value (reward on click, default 1),
 * data-slotbandit-dwell-seconds + data-slotbandit-dwell-value (reward once visible that long),
 * data-slotbandit-user='{"segment":"sports"}' (user features).
 *
 * Activation is reported once at least half of the element is visible (IntersectionObserver, threshold 0.5);
 * activation and rewards go with navigator.sendBeacon (they survive page unloads), authorised by the
 * per-event token the decision carries. window.slotbandit = {decide, reward, ready}.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var data = (script && script.dataset) || {};
  var base = (data.base || (script && script.src ? new URL(script.src, location.href).origin : location.origin)).replace(/\/$/, "");
  var key = data.key || "";
  var consent = data.consent !== "false";

  function unitId() {
    if (data.unit) return data.unit;
    try {
      var id = localStorage.getItem("slotbandit_unit");
      if (!id) {
        id = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now());
        localStorage.setItem("slotbandit_unit", id);
      }
      return id;
    } catch (e) { return undefined; }
  }

  function beacon(path, body) {
    var url = base + path;
    var payload = body ? JSON.stringify(body) : "";
    if (navigator.sendBeacon && navigator.sendBeacon(url, payload)) return;
    fetch(url, {method: "POST", body: payload, keepalive: true, headers: {"Content-Type": "text/plain"}}).catch(function () {});
  }

  function reward(decision, value, rewardId) {
    beacon("/v1/beacon/" + encodeURIComponent(decision.event_id) + "/reward?t=" + decision.token,
      {value: value, reward_id: rewardId});
  }

  function render(el, decision) {
    var block = decision.block;
    var tpl = document.querySelector('template[data-slotbandit-block="' + (window.CSS && CSS.escape ? CSS.escape(block.id) : block.id) + '"]');
    el.textContent = "";
    if (tpl) {
      el.appendChild(tpl.content.cloneNode(true));
    } else {
      var title = document.createElement("strong");
      title.textContent = block.id;
      el.appendChild(title);
      Object.keys(block.features || {}).forEach(function (name) {
        var line = document.createElement("div");
        line.textContent = name + ": " + block.features[name];
        el.appendChild(line);
      });
    }
    el.setAttribute("data-slotbandit-event", decision.event_id);
    el.setAttribute("data-slotbandit-block-id", block.id);
  }

  function watch(el, decision) {
    var shownAt = null, visibleMs = 0, activated = false, dwellSent = false;
    var dwellSeconds = parseFloat(el.getAttribute("data-slotbandit-dwell-seconds") || "0");
    var dwellValue = parseFloat(el.getAttribute("data-slotbandit-dwell-value") || "1");
    var clickValue = parseFloat(el.getAttribute("data-slotbandit-click-value") || "1");
    var timer = null;

    function dwellCheck() {
      if (!dwellSeconds || dwellSent) return;
      var total = visibleMs + (shownAt ? Date.now() - shownAt : 0);
      if (total >= dwellSeconds * 1000) { dwellSent = true; reward(decision, dwellValue, "dwell"); }
    }
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting && entry.intersectionRatio >= 0.5) {
          if (!activated) {
            activated = true;
            el.setAttribute("data-slotbandit-activated", "true");
            beacon("/v1/beacon/" + encodeURIComponent(decision.event_id) + "/activate?t=" + decision.token);
          }
          if (shownAt === null) shownAt = Date.now();
          if (dwellSeconds && !timer) timer = setInterval(dwellCheck, 500);
        } else if (shownAt !== null) {
          visibleMs += Date.now() - shownAt;
          shownAt = null;
        }
      });
    }, {threshold: [0, 0.5]});
    observer.observe(el);
    el.addEventListener("click", function () {
      if (el.getAttribute("data-slotbandit-clicked")) return;
      el.setAttribute("data-slotbandit-clicked", "true");
      reward(decision, clickValue, "click");
    });
    addEventListener("pagehide", dwellCheck);
  }

  function decide(el) {
    var slot = el.getAttribute("data-slotbandit-slot");
    var body = {consent: consent, context: {time: {timezone: Intl.DateTimeFormat().resolvedOptions().timeZone}}};
    var unit = consent ? unitId() : undefined;
    if (unit) body.unit_id = unit;
    var user = el.getAttribute("data-slotbandit-user");
    if (user) { try { body.context.user = JSON.parse(user); } catch (e) { /* ignore malformed features */ } }
    return fetch(base + "/v1/slots/" + encodeURIComponent(slot) + "/decide", {
      method: "POST", headers: {"Content-Type": "application/json", "Authorization": "Bearer " + key}, body: JSON.stringify(body)
    }).then(function (r) {
      if (!r.ok) throw new Error("slotbandit decide " + r.status);
      return r.json();
    }).then(function (decision) {
      render(el, decision);
      watch(el, decision);
      return decision;
    });
  }

  function start() {
    var els = document.querySelectorAll("[data-slotbandit-slot]");
    return Promise.all(Array.prototype.map.call(els, function (el) {
      return decide(el).catch(function (error) { el.setAttribute("data-slotbandit-error", String(error)); });
    }));
  }

  var ready = document.readyState === "loading"
    ? new Promise(function (resolve) { document.addEventListener("DOMContentLoaded", function () { resolve(start()); }); })
    : start();
  window.slotbandit = {decide: decide, reward: reward, ready: ready};
})();
