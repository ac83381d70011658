// The test-mail dialog, the interval calculator, and dates in the user's time zone.
// No inline script anywhere (the Content-Security-Policy allows this file only).
"use strict";

function localTimes() {
  for (const node of document.querySelectorAll("time[datetime]")) {
    const when = new Date(node.getAttribute("datetime"));
    if (!isNaN(when)) node.textContent = when.toLocaleString(document.documentElement.lang);
  }
}

function formValues(form) {
  const values = {};
  for (const element of form.elements) {
    if (!element.name || element.name === "csrf") continue;
    if (element.type === "checkbox") values[element.name] = element.checked ? "on" : "";
    else values[element.name] = element.value;
  }
  return values;
}

function line(parent, text, className) {
  const node = document.createElement("p");
  node.textContent = text;  // the server's words, never as markup
  if (className) node.className = className;
  parent.appendChild(node);
}

function testMail() {
  const form = document.getElementById("account-form");
  const dialog = document.getElementById("test-mail");
  if (!form || !dialog) return;
  const words = document.getElementById("test-mail-words").dataset;
  const result = document.getElementById("test-mail-result");
  document.getElementById("test-mail-open").addEventListener("click", () => {
    result.replaceChildren();
    dialog.showModal();
  });
  document.getElementById("test-mail-close").addEventListener("click", () => dialog.close());
  document.getElementById("test-mail-send").addEventListener("click", async () => {
    result.replaceChildren();
    line(result, words.sending);
    const values = formValues(form);
    values.to = document.getElementById("test-mail-to").value;
    const answer = await fetch("/ui/test-mail", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf},
      body: JSON.stringify(values),
    });
    const report = await answer.json();
    result.replaceChildren();
    if (report.errors) {
      line(result, words.invalid, "error");
      for (const [field, message] of Object.entries(report.errors)) {
        line(result, (field ? field + ": " : "") + message, "error");
      }
      return;
    }
    line(result, report.message, report.ok ? "ok" : "error");
    if (report.failure) {
      const failure = report.failure;
      line(result, words.stage + ": " + failure.stage);
      line(result, words.code + ": " + (failure.smtp_code ? failure.smtp_code + " " : "")
           + failure.smtp_message, "verbatim");
      line(result, words.exception + ": " + failure.exception);
      line(result, words.hint + ": " + failure.hint);
    }
  });
}

function calculator() {
  const apply = document.getElementById("calc-apply");
  if (!apply) return;
  apply.addEventListener("click", () => {
    const count = Number(document.getElementById("calc-count").value);
    const minutes = Number(document.getElementById("calc-minutes").value);
    if (count > 0 && minutes > 0) {
      document.getElementById("f-send_interval_ms").value = Math.ceil(minutes * 60000 / count);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  testMail();
  calculator();
});
