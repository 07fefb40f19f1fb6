function (doc) {
  if (doc.type === 'task' && doc._attachments) {
    var files = {};
    var declared = doc.artifact_types || {};  // the type the task said, when stored as another
    for (var name in doc._attachments) {
      files[name] = {content_type: declared[name] || doc._attachments[name].content_type,
                     length: doc._attachments[name].length};
    }
    emit([doc.record, doc.order, doc.platform], files);
  }
}
