// dirt: keeps a page current without a reload, follows a running task's log, and sends the
// write actions (cancel, re-run, re-run as a new record) with the bearer token the user
// unlocked once.
(function () {
  'use strict';
  var body = document.body;
  var TOKEN_KEY = 'dirt-token';
  var status = document.getElementById('live-status');

  function setStatus(text, offline) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle('offline', !!offline);
  }

  function message(text, bad) {
    var box = document.getElementById('message');
    if (!box) return;
    box.textContent = text;
    box.hidden = !text;
    box.classList.toggle('bad', !!bad);
  }

  // -- the live region: reload it when the database's update_seq moves ------------------
  var live = document.querySelector('[data-live]');
  var seq = null;
  var refreshing = false;
  var again = false;  // a change came in while refreshing: refresh once more after

  function refresh() {
    if (!live) return Promise.resolve();
    if (refreshing) { again = true; return Promise.resolve(); }
    refreshing = true;
    return fetch(location.href, {headers: {'X-Dirt-Fragment': '1'}, cache: 'no-store'})
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text();
      })
      .then(function (html) { live.innerHTML = html; setStatus('live'); })
      .catch(function () { setStatus('database unavailable', true); })
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function poll() {
    fetch(body.dataset.seqUrl, {cache: 'no-store'})
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
      })
      .then(function (data) {
        setStatus('live');
        if (seq !== null && data.update_seq !== seq) refresh();
        seq = data.update_seq;
      })
      .catch(function () { setStatus('database unavailable', true); })
      .then(function () { setTimeout(poll, Number(body.dataset.poll) || 2000); });
  }
  if (live) poll();

  // -- a running task's log: fetch what was added since the last offset ----------------
  var log = document.getElementById('log');
  function followLog() {
    var offset = Number(log.dataset.offset) || 0;
    fetch(log.dataset.url + '?offset=' + offset, {cache: 'no-store'})
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
      })
      .then(function (data) {
        var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
        if (data.reset) log.textContent = data.text;
        else if (data.text) log.appendChild(document.createTextNode(data.text));
        log.dataset.offset = data.size;
        if (atBottom) log.scrollTop = log.scrollHeight;
        if (data.final) {
          log.dataset.follow = '0';
          var note = document.getElementById('log-state');
          if (note) note.textContent = 'the task ended: ' + data.state;
          refresh();
        }
      })
      .catch(function () { setStatus('database unavailable', true); })
      .then(function () {
        if (log.dataset.follow === '1') setTimeout(followLog, Number(log.dataset.poll) || 1000);
      });
  }
  if (log && log.dataset.follow === '1') {
    log.scrollTop = log.scrollHeight;
    followLog();
  }

  // -- write actions ----------------------------------------------------------------------
  var form = document.getElementById('token-form');
  var state = document.getElementById('token-state');

  function showToken() {
    if (!form) return;
    var unlocked = !!localStorage.getItem(TOKEN_KEY);
    form.hidden = unlocked;
    state.hidden = !unlocked;
  }

  if (form) {
    showToken();
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var token = form.elements.token.value.trim();
      if (!token) return;
      fetch(body.dataset.tokenUrl, {headers: {'Authorization': 'Bearer ' + token}})
        .then(function (response) {
          if (response.ok) {
            localStorage.setItem(TOKEN_KEY, token);
            form.elements.token.value = '';
            message('Write actions unlocked.');
          } else {
            message('That token was refused.', true);
          }
          showToken();
        });
    });
    document.getElementById('token-forget').addEventListener('click', function () {
      localStorage.removeItem(TOKEN_KEY);
      message('Write actions locked.');
      showToken();
    });
  }

  // A button with data-post sends its data-body; a form with data-post sends its fields
  // (a checkbox as true or false). An answer with `page` (a new record) goes there.
  function send(control, url, payload) {
    var token = localStorage.getItem(TOKEN_KEY);
    if (!token) {
      message('Enter the write token (top right) first.', true);
      if (form) form.elements.token.focus();
      return;
    }
    control.disabled = true;
    fetch(url, {
      method: 'POST',
      headers: {'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
      body: payload
    })
      .then(function (response) {
        return response.json().then(function (data) {
          if (response.status === 401 || response.status === 403) {
            localStorage.removeItem(TOKEN_KEY);
            showToken();
          }
          message(response.ok ? data.message : data.error, !response.ok);
          if (response.ok && data.page) location.assign(data.page);
        });
      })
      .catch(function () { message('The server did not answer.', true); })
      .then(function () { control.disabled = false; refresh(); });
  }

  document.addEventListener('click', function (event) {
    var button = event.target.closest('button[data-post]');
    if (button) send(button, button.dataset.post, button.dataset.body || '{}');
  });

  document.addEventListener('submit', function (event) {
    var target = event.target.closest('form[data-post]');
    if (!target) return;
    event.preventDefault();
    var fields = {};
    Array.prototype.forEach.call(target.elements, function (field) {
      if (!field.name) return;
      fields[field.name] = field.type === 'checkbox' ? field.checked : field.value.trim();
    });
    send(target.querySelector('button[type=submit]') || target, target.dataset.post,
         JSON.stringify(fields));
  });
}());
