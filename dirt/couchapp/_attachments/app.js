// dirt's CouchApp: a read-only page that reads the design document's views straight from the
// database with relative URLs, so any replica shows its records without dirt's web server.
// Page: <db>/_design/dirt/index.html  (#record/<name> shows one record's tasks).
(function () {
  'use strict';
  var PAGE = 25;
  var POLL_MS = 5000;
  // A record's overall state: the first state present wins (dirt/documents.py OVERALL_ORDER;
  // tests/test_web.py checks that the two lists agree).
  var ORDER = ['running', 'pending', 'error', 'failed', 'unschedulable', 'cancelled', 'success'];
  var BAR = ['success', 'failed', 'error', 'unschedulable', 'cancelled', 'running', 'pending'];
  var SVG = 'http://www.w3.org/2000/svg';
  var app = document.getElementById('app');
  // Paging by startkey plus skip over the records of the same moment already shown
  // (startkey_docid is not used: PouchDB Server ignores it).
  var cursors = [];  // the pages before this one
  var current = null;  // {key, skip} of this page, null for the newest

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function get(url) {
    return fetch(url, {headers: {'Accept': 'application/json'}, cache: 'no-store'})
      .then(function (response) {
        if (!response.ok) throw new Error(url + ': HTTP ' + response.status);
        return response.json();
      });
  }

  function view(name, params, keys) {
    var query = Object.keys(params).map(function (k) {
      return k + '=' + encodeURIComponent(JSON.stringify(params[k]));
    }).join('&');
    var url = '_view/' + name + (query ? '?' + query : '');
    if (!keys) return get(url);
    return fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json',
      'Accept': 'application/json'}, body: JSON.stringify({keys: keys})})
      .then(function (response) {
        if (!response.ok) throw new Error(url + ': HTTP ' + response.status);
        return response.json();
      });
  }

  function overall(counts) {
    for (var i = 0; i < ORDER.length; i++) if (counts[ORDER[i]]) return ORDER[i];
    return 'empty';
  }

  function badge(state) { return el('span', {'class': 'badge s-' + state}, [state]); }

  function bar(counts, big) {
    var total = 0;
    BAR.forEach(function (s) { total += counts[s] || 0; });
    var svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', big ? 'bar big' : 'bar');
    svg.setAttribute('viewBox', '0 0 100 10');
    svg.setAttribute('preserveAspectRatio', 'none');
    var x = 0;
    BAR.forEach(function (s) {
      if (!counts[s]) return;
      var rect = document.createElementNS(SVG, 'rect');
      var width = 100 * counts[s] / total;
      rect.setAttribute('class', 's-' + s);
      rect.setAttribute('x', x); rect.setAttribute('y', 0);
      rect.setAttribute('width', width); rect.setAttribute('height', 10);
      svg.appendChild(rect);
      x += width;
    });
    return svg;
  }

  function countsText(counts) {
    return el('span', {'class': 'counts'}, BAR.filter(function (s) { return counts[s]; })
      .map(function (s) { return el('span', {'class': 'c t-' + s}, [counts[s] + ' ' + s]); }));
  }

  function docUrl(id) { return '../../' + encodeURIComponent(id); }

  // -- records ----------------------------------------------------------------------------
  // Counts over the whole database are a grouped reduce over every task: read them once a
  // minute, not on every refresh.
  var totalsCache = null;
  var totalsAt = 0;
  function totals() {
    if (totalsCache && Date.now() - totalsAt < 60000) return Promise.resolve(totalsCache);
    return view('state_counts', {group: true}).then(function (answer) {
      totalsCache = answer;
      totalsAt = Date.now();
      return answer;
    });
  }

  function showRecords() {
    var params = {descending: true, limit: PAGE + 1};
    if (current) { params.startkey = current.key; params.skip = current.skip; }
    return Promise.all([view('records_by_time', params), totals()])
      .then(function (answers) {
        var rows = answers[0].rows.slice(0, PAGE);
        var next = answers[0].rows[PAGE];
        var names = rows.map(function (r) { return r.value.name; });
        var keys = [];
        names.forEach(function (n) { ORDER.forEach(function (s) { keys.push([n, s]); }); });
        var counted = keys.length ? view('record_states', {group: true}, keys)
          : Promise.resolve({rows: []});
        return counted.then(function (answer) {
          var counts = {};
          names.forEach(function (n) { counts[n] = {}; });
          answer.rows.forEach(function (r) { if (r.value) counts[r.key[0]][r.key[1]] = r.value; });
          render(rows, next, counts, answers[1].rows);
        });
      });

    function render(rows, next, counts, totals) {
      var body = el('tbody', {}, rows.map(function (row) {
        var name = row.value.name;
        var nameCell = el('td', {'class': 'name'}, [el('a', {href: '#record/' + encodeURIComponent(name)}, [name])]);
        if (row.value.description) nameCell.appendChild(el('div', {'class': 'desc'}, [row.value.description]));
        return el('tr', {}, [
          nameCell,
          el('td', {'class': 'w-bar'}, [bar(counts[name]), countsText(counts[name])]),
          el('td', {}, [badge(overall(counts[name]))]),
          el('td', {}, [row.value.submitter || '']),
          el('td', {'class': 'when'}, [row.key])
        ]);
      }));
      var pager = el('nav', {'class': 'pager'});
      if (cursors.length) {
        var newer = el('a', {href: '#'}, ['← newer']);
        newer.addEventListener('click', function (e) { e.preventDefault(); current = cursors.pop(); showRecords(); });
        pager.appendChild(newer);
      }
      if (next) {
        var older = el('a', {href: '#', rel: 'next'}, ['older →']);
        older.addEventListener('click', function (e) {
          e.preventDefault();
          var ties = rows.filter(function (r) { return r.key === next.key; }).length;
          if (current && current.key === next.key) ties += current.skip;
          cursors.push(current);
          current = {key: next.key, skip: ties};
          showRecords();
        });
        pager.appendChild(older);
      }
      var chips = el('p', {'class': 'totals'}, ['All tasks: ']);
      totals.forEach(function (r) { chips.appendChild(el('span', {'class': 'chip t-' + r.key}, [r.value + ' ' + r.key])); });
      var table = rows.length ? el('table', {'class': 'records'}, [
        el('thead', {}, [el('tr', {}, ['Record', 'Tasks', 'State', 'Submitter', 'Created'].map(function (h) { return el('th', {}, [h]); }))]),
        body]) : el('p', {'class': 'empty'}, ['No records yet.']);
      replace([el('div', {'class': 'page-head'}, [el('h1', {}, ['Records'])]), chips, table, pager]);
    }
  }

  // -- one record -------------------------------------------------------------------------
  function showRecord(name) {
    var range = {startkey: [name], endkey: [name, {}]};
    return Promise.all([get(docUrl('record:' + name)), view('tasks_by_record', range),
                        view('task_files', range)])
      .then(function (answers) {
        var record = answers[0];
        var files = {};
        answers[2].rows.forEach(function (r) { files[r.id] = r.value; });
        var counts = {};
        answers[1].rows.forEach(function (r) { counts[r.value.state] = (counts[r.value.state] || 0) + 1; });
        var rows = answers[1].rows.map(function (r) {
          var t = r.value;
          var links = Object.keys(files[r.id] || {}).sort().map(function (f) {
            // artifacts are downloaded, never opened as pages of the database's origin
            var attrs = {href: docUrl(r.id) + '/' + encodeURIComponent(f)};
            if (f !== 'log.txt') attrs.download = f;
            return el('a', attrs, [f === 'log.txt' ? 'log' : f]);
          });
          // a task is named name@platform[:key] (dirt/documents.py task_spec)
          var name = el('td', {'class': 'name', title: t.name + '@' + t.platform +
                               (t.key ? ':' + t.key : '')}, [t.name]);
          if (t.key) name.appendChild(el('span', {'class': 'task-key'}, [':' + t.key]));
          return el('tr', {}, [
            name, el('td', {}, [t.platform]),
            el('td', {}, [badge(t.state)]), el('td', {}, [t.host || '']),
            el('td', {'class': 'num'}, [t.duration == null ? '' : t.duration.toFixed(1) + ' s']),
            el('td', {'class': 'num'}, [t.attempts ? String(t.attempts) : '']),
            el('td', {'class': 'reason'}, [t.reason || '']), el('td', {'class': 'files'}, links)
          ]);
        });
        var facts = el('dl', {'class': 'facts'}, [
          el('dt', {}, ['Submitter']), el('dd', {}, [record.submitter || '—']),
          el('dt', {}, ['Created']), el('dd', {}, [record.created || ''])]);
        Object.keys(record.meta || {}).forEach(function (k) {
          facts.appendChild(el('dt', {}, [k]));
          facts.appendChild(el('dd', {}, [String(record.meta[k])]));
        });
        replace([
          el('p', {'class': 'crumbs'}, [el('a', {href: '#'}, ['Records']), ' / ' + name]),
          el('div', {'class': 'page-head'}, [el('h1', {}, [name])]),
          el('p', {'class': 'description'}, [record.description || '']),
          facts,
          el('div', {'class': 'summary'}, [badge(overall(counts)), bar(counts, true), countsText(counts)]),
          el('table', {'class': 'tasks'}, [
            el('thead', {}, [el('tr', {}, ['Task', 'Platform', 'State', 'Host', 'Duration', 'Attempts', 'Reason', 'Files'].map(function (h) { return el('th', {}, [h]); }))]),
            el('tbody', {}, rows)])
        ]);
      });
  }

  function replace(nodes) {
    app.textContent = '';
    nodes.forEach(function (n) { app.appendChild(n); });
  }

  function route() {
    var hash = location.hash.replace(/^#/, '');
    var shown = hash.indexOf('record/') === 0
      ? showRecord(decodeURIComponent(hash.slice(7))) : showRecords();
    var status = document.getElementById('live-status');
    var box = document.getElementById('message');
    return shown.then(function () {
      status.textContent = 'live'; status.classList.remove('offline'); box.hidden = true;
    }, function (err) {
      status.textContent = 'offline'; status.classList.add('offline');
      box.textContent = 'Cannot read the database: ' + err.message; box.hidden = false;
    });
  }

  var dbName = decodeURIComponent(location.pathname.split('/')[1] || '');
  document.getElementById('db-name').textContent = dbName;
  window.addEventListener('hashchange', function () { cursors = []; current = null; route(); });
  function tick() { route().then(function () { setTimeout(tick, POLL_MS); }); }
  tick();
}());
