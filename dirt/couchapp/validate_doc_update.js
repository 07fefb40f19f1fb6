function (newDoc, oldDoc, userCtx, secObj) {
  // dirt's document shapes, checked for every writer (dirt/documents.py builds them).
  if (newDoc._deleted || newDoc._id.indexOf('_design/') === 0) {
    return;
  }
  function need(ok, message) {
    if (!ok) {
      throw({forbidden: newDoc._id + ': ' + message});
    }
  }
  function isString(v) { return typeof v === 'string' && v.length > 0; }
  var name = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
  var states = ['pending', 'running', 'success', 'failed', 'error', 'unschedulable', 'cancelled'];
  need(isString(newDoc.type), 'a document needs a type');
  // Files are served from the database's own origin, where a script could read and write
  // everything: only types that no browser runs (dirt/documents.py SAFE_TYPES); a file kept
  // from the revision before (a stub) is not looked at again.
  var safeTypes = ['text/plain', 'application/json', 'application/octet-stream', 'image/png',
                   'image/jpeg', 'image/gif', 'image/webp'];
  var files = newDoc._attachments || {};
  var before = (oldDoc && oldDoc._attachments) || {};
  for (var file in files) {
    var kind = String(files[file].content_type || '').split(';')[0].trim().toLowerCase();
    need((files[file].stub && before[file]) || safeTypes.indexOf(kind) >= 0,
         'file ' + JSON.stringify(file) + ' of type ' + JSON.stringify(kind) + ' could run ' +
         'in a browser: store it as text/plain or application/octet-stream');
  }
  if (oldDoc && !oldDoc._deleted) {
    need(oldDoc.type === newDoc.type, 'the type of a document cannot change');
  }
  if (newDoc.type === 'record') {
    need(isString(newDoc.name) && name.test(newDoc.name), 'invalid record name');
    need(newDoc._id === 'record:' + newDoc.name, 'a record id is record:<name>');
    need(isString(newDoc.created), 'a record needs created');
    need(typeof newDoc.meta === 'object' && newDoc.meta !== null && !Array.isArray(newDoc.meta),
         'record meta must be an object');
    need(newDoc.tasks === undefined || (Array.isArray(newDoc.tasks) &&
         newDoc.tasks.every(function (id) {
           return isString(id) && id.indexOf('task:' + newDoc.name + ':') === 0;
         })), 'record tasks must be a list of its task ids');
  } else if (newDoc.type === 'task') {
    need(isString(newDoc.record) && isString(newDoc.name) && isString(newDoc.platform),
         'a task needs record, name and platform');
    var taskId = 'task:' + newDoc.record + ':' + newDoc.name + ':' + newDoc.platform;
    if (newDoc.key) {
      need(name.test(newDoc.key), 'invalid task key');
      taskId += ':' + newDoc.key;
    }
    need(newDoc._id === taskId, 'a task id is task:<record>:<name>:<platform>[:<key>]');
    need(states.indexOf(newDoc.state) >= 0, 'invalid task state ' + JSON.stringify(newDoc.state));
    need(Array.isArray(newDoc.attempts), 'task attempts must be a list');
    need(Array.isArray(newDoc.requires), 'task requires must be a list');
    need(typeof newDoc.args === 'object' && newDoc.args !== null && !Array.isArray(newDoc.args),
         'task args must be an object');
    var declared = newDoc.artifact_types;
    need(declared === undefined || (typeof declared === 'object' && declared !== null &&
         !Array.isArray(declared) && Object.keys(declared).every(function (file) {
           return isString(declared[file]) && declared[file].length <= 200;
         })), 'task artifact_types must map file names to content types');
    if (newDoc.state === 'running') {
      need(isString(newDoc.host), 'a running task needs a host');
    }
  } else if (newDoc.type === 'host') {
    need(isString(newDoc.name) && name.test(newDoc.name), 'invalid host name');
    need(newDoc._id === 'host:' + newDoc.name, 'a host id is host:<name>');
    need(isString(newDoc.platform), 'a host needs a platform');
    need(newDoc.slots === null || newDoc.slots === undefined ||
         (typeof newDoc.slots === 'number' && newDoc.slots >= 1), 'host slots must be >= 1');
    need((newDoc.ssh === null) !== (newDoc.local === null), 'a host is either ssh or local');
  } else if (newDoc.type === 'hook') {
    need(['github', 'generic'].indexOf(newDoc.source) >= 0, 'a hook source is github or generic');
    need(isString(newDoc.delivery) && name.test(newDoc.delivery), 'invalid hook delivery id');
    need(newDoc._id === 'hook:' + newDoc.source + ':' + newDoc.delivery,
         'a hook id is hook:<source>:<delivery>');
    need(['accepted', 'done', 'refused'].indexOf(newDoc.state) >= 0, 'invalid hook state');
  } else {
    need(false, 'unknown document type ' + JSON.stringify(newDoc.type));
  }
}
